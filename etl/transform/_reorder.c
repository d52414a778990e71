/*
 * etl.transform._reorder: the ``_extra`` texts of a table put into its key order at the speed of
 * a copy (etl/transform/extra_fetch.py says why and how; this is its inner loop).
 *
 * scatter: a batch of staged texts (an Arrow string_view or large_string array), each with its
 *   place in key order (-1: not in the table), cut into one run of records per output chunk
 *   (bucket = place / chunk_rows); a record is [place: int64][length: uint32][bytes]. Null texts
 *   and "{}" (what a row gets anyway) are left out.
 * gather: one bucket's records (all runs written to it, in any order) as the texts of its
 *   output chunk, in place order, "{}" where a place has none.
 * The runs travel through the bucket files compressed (extra_fetch.py): these texts repeat.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../_owned.h"

typedef struct { int64_t bucket; char *buf; Py_ssize_t len, cap; } run;  /* cap: the bytes it takes */

typedef struct { run *v; Py_ssize_t n, cap; } runs;

/* The run of ``bucket`` (rows come nearly in key order: the last one used is tried first). */
static run *find(runs *R, int64_t bucket, Py_ssize_t *last) {
    if (*last >= 0 && R->v[*last].bucket == bucket) return &R->v[*last];
    for (Py_ssize_t i = 0; i < R->n; i++)
        if (R->v[i].bucket == bucket) { *last = i; return &R->v[i]; }
    if (R->n == R->cap) {
        Py_ssize_t cap = R->cap ? R->cap * 2 : 8;
        run *v = PyMem_RawRealloc(R->v, cap * sizeof(run));
        if (!v) return NULL;
        R->v = v; R->cap = cap;
    }
    run *r = &R->v[R->n];
    memset(r, 0, sizeof *r);
    r->bucket = bucket;
    *last = R->n++;
    return r;
}

static void free_runs(runs *R) {
    for (Py_ssize_t i = 0; i < R->n; i++) PyMem_RawFree(R->v[i].buf);
    PyMem_RawFree(R->v);
}

static int valid(const uint8_t *bits, Py_ssize_t i) {
    return !bits || (bits[i >> 3] >> (i & 7)) & 1;
}

/* Text ``i`` of the array: in its 16-byte view (inline up to 12 bytes, else in a data buffer)
 * or between two large offsets; 0 when it lies outside the buffers. */
static int text_at(int view, const char *main, Py_ssize_t main_len, const Py_buffer *data, Py_ssize_t nd,
                   Py_ssize_t i, const char **s, Py_ssize_t *len) {
    if (view) {
        if ((i + 1) * 16 > main_len) return 0;
        const char *v = main + i * 16;
        int32_t l, bi, off;
        memcpy(&l, v, 4);
        if (l < 0) return 0;
        if (l <= 12) { *s = v + 4; *len = l; return 1; }
        memcpy(&bi, v + 8, 4); memcpy(&off, v + 12, 4);
        if (bi < 0 || bi >= nd || off < 0 || (Py_ssize_t)off + l > data[bi].len) return 0;
        *s = (const char *)data[bi].buf + off; *len = l;
        return 1;
    }
    const int64_t *o = (const int64_t *)main;
    if ((i + 2) * 8 > main_len || nd < 1) return 0;
    int64_t a = o[i], b = o[i + 1];
    if (a < 0 || b < a || b > data[0].len) return 0;
    *s = (const char *)data[0].buf + a; *len = (Py_ssize_t)(b - a);
    return 1;
}

/*
 * scatter(kind: "view" | "large", validity: buffer | None, offset: int, n: int, main: buffer,
 *         data: list[buffer], places: buffer (int64, n), chunk_rows: int) -> list[(bucket, Owned)]
 * "view": main is the 16-byte views, data the variadic buffers; "large": main is the int64
 * offsets (n + 1 from ``offset``), data one buffer.
 */
static PyObject *scatter(PyObject *Py_UNUSED(self), PyObject *args) {
    const char *kind;
    PyObject *validity, *datas;
    Py_ssize_t offset, n;
    Py_buffer main, places;
    long long chunk_rows;
    if (!PyArg_ParseTuple(args, "sOnny*Oy*L", &kind, &validity, &offset, &n, &main, &datas, &places,
                          &chunk_rows))
        return NULL;
    PyObject *result = NULL;
    Py_buffer bits = {0};
    Py_ssize_t nd = 0;
    Py_buffer *data = NULL;
    runs R = {0};
    int view = strcmp(kind, "view") == 0;
    if (chunk_rows <= 0 || places.len < n * (Py_ssize_t)sizeof(int64_t) || offset < 0) {
        PyErr_SetString(PyExc_ValueError, "bad arguments");
        goto done;
    }
    if (validity != Py_None && PyObject_GetBuffer(validity, &bits, PyBUF_SIMPLE) < 0) goto done;
    nd = PySequence_Size(datas);
    if (nd < 0) goto done;
    data = PyMem_RawCalloc(nd ? nd : 1, sizeof(Py_buffer));
    if (!data) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *b = PySequence_GetItem(datas, i);
        if (!b) { nd = i; goto done; }
        int bad = PyObject_GetBuffer(b, &data[i], PyBUF_SIMPLE);
        Py_DECREF(b);
        if (bad < 0) { nd = i; goto done; }
    }
    {
        const int64_t *place = places.buf;
        const uint8_t *vb = validity != Py_None ? (const uint8_t *)bits.buf : NULL;
        Py_ssize_t last = -1;
        int failed = 0;
        Py_BEGIN_ALLOW_THREADS
        /* Twice over the batch: the bytes each run takes, then the records into buffers of that
         * size (no growing by copies, no pages touched twice). */
        for (int pass = 0; pass < 2 && !failed; pass++) {
            for (Py_ssize_t i = 0; i < n && !failed; i++) {
                int64_t p = place[i];
                if (p < 0 || !valid(vb, offset + i)) continue;
                const char *s;
                Py_ssize_t len;
                if (!text_at(view, main.buf, main.len, data, nd, offset + i, &s, &len)) { failed = 3; break; }
                if (len == 2 && s[0] == '{' && s[1] == '}') continue;
                if (len > (Py_ssize_t)UINT32_MAX) { failed = 2; break; }
                run *r = find(&R, p / chunk_rows, &last);
                if (!r) { failed = 1; break; }
                if (pass == 0) { r->cap += 12 + len; continue; }
                if (!r->buf && !(r->buf = PyMem_RawMalloc(r->cap ? r->cap : 1))) { failed = 1; break; }
                uint32_t l = (uint32_t)len;
                memcpy(r->buf + r->len, &p, 8); memcpy(r->buf + r->len + 8, &l, 4);
                memcpy(r->buf + r->len + 12, s, len);
                r->len += 12 + len;
            }
        }
        Py_END_ALLOW_THREADS
        if (failed == 1) { PyErr_NoMemory(); goto done; }
        if (failed == 2) { PyErr_SetString(PyExc_ValueError, "a text of 4 GiB or more"); goto done; }
        if (failed == 3) { PyErr_SetString(PyExc_ValueError, "a text outside its buffers"); goto done; }
    }
    result = PyList_New(R.n);
    if (!result) goto done;
    for (Py_ssize_t i = 0; i < R.n; i++) {
        PyObject *buf = own(&R.v[i].buf, R.v[i].len);
        PyObject *t = buf ? Py_BuildValue("(LN)", (long long)R.v[i].bucket, buf) : NULL;
        if (!t) { Py_CLEAR(result); goto done; }
        PyList_SET_ITEM(result, i, t);
    }
done:
    free_runs(&R);
    for (Py_ssize_t i = 0; i < nd; i++) PyBuffer_Release(&data[i]);
    PyMem_RawFree(data);
    if (bits.obj) PyBuffer_Release(&bits);
    PyBuffer_Release(&main);
    PyBuffer_Release(&places);
    return result;
}

/*
 * gather(parts: list[buffer], base: int, length: int) -> (offsets: Owned (int64, length + 1),
 *        data: Owned): from the records of ``parts`` (a bucket's runs), the texts of places
 *        base .. base + length - 1, "{}" where none.
 */
static PyObject *gather(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *seq;
    long long base;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "OLn", &seq, &base, &length)) return NULL;
    PyObject *result = NULL;
    const char **at = NULL;
    uint32_t *lens = NULL;
    char *offsets = NULL, *data = NULL;
    Py_ssize_t nparts = PySequence_Size(seq), got = 0;
    Py_buffer *in = nparts > 0 ? PyMem_RawCalloc(nparts, sizeof(Py_buffer)) : NULL;
    if (nparts < 0 || length < 0 || (nparts > 0 && !in)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad arguments");
        goto done;
    }
    for (; got < nparts; got++) {
        PyObject *b = PySequence_GetItem(seq, got);
        if (!b) goto done;
        int bad = PyObject_GetBuffer(b, &in[got], PyBUF_SIMPLE);
        Py_DECREF(b);
        if (bad < 0) goto done;
    }
    at = PyMem_RawCalloc(length ? length : 1, sizeof(char *));
    lens = PyMem_RawCalloc(length ? length : 1, sizeof(uint32_t));
    offsets = PyMem_RawMalloc((length + 1) * sizeof(int64_t));
    if (!at || !lens || !offsets) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t k = 0; k < nparts; k++) {
        const char *p = in[k].buf, *end = p + in[k].len;
        while (p < end) {
            int64_t place;
            uint32_t len;
            if (end - p < 12) { PyErr_SetString(PyExc_ValueError, "a bucket ends inside a record"); goto done; }
            memcpy(&place, p, 8); memcpy(&len, p + 8, 4);
            p += 12;
            if ((uint64_t)(end - p) < len) { PyErr_SetString(PyExc_ValueError, "a bucket ends inside a text"); goto done; }
            int64_t slot = place - base;
            if (slot < 0 || slot >= length) {
                PyErr_SetString(PyExc_ValueError, "an extra text belongs outside its chunk; a bug: report it");
                goto done;
            }
            if (at[slot]) { PyErr_SetString(PyExc_ValueError, "two extra texts for one row; a bug: report it"); goto done; }
            at[slot] = p; lens[slot] = len;
            p += len;
        }
    }
    {
        int64_t *o = (int64_t *)offsets, total = 0;
        for (Py_ssize_t i = 0; i < length; i++) { o[i] = total; total += at[i] ? (int64_t)lens[i] : 2; }
        o[length] = total;
        data = PyMem_RawMalloc(total ? (size_t)total : 1);
        if (!data) { PyErr_NoMemory(); goto done; }
        for (Py_ssize_t i = 0; i < length; i++) {
            if (at[i]) memcpy(data + o[i], at[i], lens[i]);
            else memcpy(data + o[i], "{}", 2);
        }
        PyObject *po = own(&offsets, (length + 1) * (Py_ssize_t)sizeof(int64_t));
        PyObject *pd = po ? own(&data, (Py_ssize_t)total) : NULL;
        if (pd) result = Py_BuildValue("(NN)", po, pd);
        else Py_XDECREF(po);
    }
done:
    PyMem_RawFree(at); PyMem_RawFree(lens); PyMem_RawFree(offsets); PyMem_RawFree(data);
    for (Py_ssize_t k = 0; k < got; k++) PyBuffer_Release(&in[k]);
    PyMem_RawFree(in);
    return result;
}

static PyMethodDef methods[] = {
    {"scatter", scatter, METH_VARARGS, "Staged texts cut into one run of records per output chunk."},
    {"gather", gather, METH_VARARGS, "One output chunk's texts in place order from its bucket's records."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_reorder", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__reorder(void) {
    if (owned_ready("etl.transform._reorder.Owned") < 0) return NULL;
    return PyModule_Create(&module);
}
