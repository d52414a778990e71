/*
 * etl._extra: the ``_extra`` column of staged rows at the speed of a byte scan.
 *
 * For a batch of source records (JSON texts, already parsed once by DuckDB, so known to be
 * valid), walk each record down the levels of its source and write, for every record of every
 * homed level, the record's JSON less the members its typed columns hold exactly and less the
 * non-empty lists its child levels' rows come from. What it writes is the source's own text of
 * each kept member, minified (white space outside strings dropped); nothing is parsed into
 * values. The rules are the ones of etl/stage/extra.py (the pure Python version, used when this
 * module is not built), and tests check that both give the same values.
 *
 * A key written with escapes in the export is compared with its escapes decoded, as DuckDB reads
 * it ("kid\u0073" is "kids"). On input it cannot walk (not valid JSON), it raises ValueError and
 * the caller falls back to the Python version.
 *
 * dup_keys finds the records that hold an object with a key twice (which DuckDB reads as its
 * first value, every JSON library the users know as its last: etl/stage/dupkeys.py rewrites them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../_jsonesc.h"
#include "../_owned.h"

enum { T_TEXT = 1, T_INT32, T_INT64, T_DOUBLE, T_BOOL, T_JSON, T_ARRAY };

typedef struct { const char *s; Py_ssize_t n; } span;

typedef struct {
    span key;
    int type;      /* T_* ; for T_ARRAY: elem_type, depth */
    int elem_type;
    int depth;
} typed_key;

typedef struct {
    int nparts;
    span parts[8];
} kpath;

typedef struct {
    int level;     /* the child level's index */
    kpath path;    /* where its records sit in the parent's record */
    int homed;     /* its rows have a home table: a non-empty list of them leaves the parent */
} kid;

typedef struct {
    int homed, whole;
    int ntyped;
    typed_key *typed;
    int nkids;
    kid *kids;
    /* output */
    char *buf; Py_ssize_t len, cap;
    int64_t *offsets; Py_ssize_t rows, rcap;
    int32_t *rec; int32_t *pos;
} level;

typedef struct { const char *p, *end; int err; } cur;

static void ws(cur *c) { while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++; }

static const char *skip_string(const char *p, const char *end) {
    /* p at the opening quote; returns the position after the closing quote, or NULL. A quote
     * closes the string when an even number of backslashes stand before it. */
    p++;
    for (;;) {
        const char *q = memchr(p, '"', end - p);
        if (!q) return NULL;
        const char *b = q;
        while (b > p && b[-1] == '\\') b--;
        if (((q - b) & 1) == 0) return q + 1;
        p = q + 1;
    }
}

/* bytes that matter when skipping a container: quotes and brackets */
static unsigned char special[256];

static const char *skip_value(const char *p, const char *end) {
    if (p >= end) return NULL;
    char ch = *p;
    if (ch == '"') return skip_string(p, end);
    if (ch == '{' || ch == '[') {
        int depth = 0;
        while (p < end) {
            while (p < end && !special[(unsigned char)*p]) p++;
            if (p >= end) break;
            ch = *p;
            if (ch == '"') { p = skip_string(p, end); if (!p) return NULL; continue; }
            if (ch == '{' || ch == '[') depth++;
            else { depth--; if (depth == 0) return p + 1; }
            p++;
        }
        return NULL;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') p++;
    return p;
}

static int grow(level *L, Py_ssize_t need) {
    if (L->len + need <= L->cap) return 0;
    Py_ssize_t cap = L->cap ? L->cap : 1 << 16;
    while (cap < L->len + need) cap *= 2;
    char *b = PyMem_RawRealloc(L->buf, cap);
    if (!b) return -1;
    L->buf = b; L->cap = cap;
    return 0;
}

static int put(level *L, const char *s, Py_ssize_t n) {
    if (grow(L, n)) return -1;
    memcpy(L->buf + L->len, s, n); L->len += n;
    return 0;
}

static int is_int_token(const char *p, const char *q) {
    if (p < q && *p == '-') p++;
    if (p >= q) return 0;
    for (; p < q; p++) if (*p < '0' || *p > '9') return 0;
    return 1;
}

static int int_fits(const char *p, const char *q, int bits) {
    /* an integer token within a signed range of ``bits`` bits (53: exact in a double) */
    int neg = 0;
    if (*p == '-') { neg = 1; p++; }
    while (p < q - 1 && *p == '0') p++;
    Py_ssize_t n = q - p;
    if (n > 19) return 0;
    uint64_t v = 0;
    for (; p < q; p++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    uint64_t lim = bits == 32 ? (uint64_t)1 << 31 : bits == 53 ? (uint64_t)1 << 53 : (uint64_t)1 << 63;
    return neg ? v <= lim : (bits == 53 ? v <= lim : v < lim);
}

static int scalar_exact(int type, const char *p, const char *q) {
    if (p >= q) return 0;
    switch (type) {
    case T_TEXT: return *p == '"';
    case T_INT32: return is_int_token(p, q) && int_fits(p, q, 32);
    case T_INT64: return is_int_token(p, q) && int_fits(p, q, 64);
    case T_DOUBLE:
        if (!(*p == '-' || (*p >= '0' && *p <= '9'))) return 0;
        if (is_int_token(p, q)) return int_fits(p, q, 53);
        return 1;
    case T_BOOL: return (q - p == 4 && memcmp(p, "true", 4) == 0) || (q - p == 5 && memcmp(p, "false", 5) == 0);
    case T_JSON: return !(q - p == 4 && memcmp(p, "null", 4) == 0);
    }
    return 0;
}

static int array_exact(int elem_type, int depth, const char *p, const char *q) {
    /* [x, ...] whose elements (null allowed) are exact for elem_type, ``depth`` levels deep */
    if (p >= q || *p != '[') return 0;
    cur c = {p + 1, q, 0};
    ws(&c);
    if (c.p < q && *c.p == ']') return 1;
    for (;;) {
        ws(&c);
        const char *e = skip_value(c.p, q);
        if (!e) return 0;
        if (!(e - c.p == 4 && memcmp(c.p, "null", 4) == 0)) {
            int ok = depth > 1 ? array_exact(elem_type, depth - 1, c.p, e) : scalar_exact(elem_type, c.p, e);
            if (!ok) return 0;
        }
        c.p = e; ws(&c);
        if (c.p >= q) return 0;
        if (*c.p == ',') { c.p++; continue; }
        return *c.p == ']';
    }
}

static int exact(const typed_key *k, const char *p, const char *q) {
    if (k->type == T_ARRAY) return array_exact(k->elem_type, k->depth, p, q);
    return scalar_exact(k->type, p, q);
}

/* The UTF-8 bytes of the JSON string text ks..ke (between its quotes, escapes decoded) written to
 * ``out`` (room for ``cap`` bytes); their number, or -1 when they do not fit or an escape is
 * broken. A lone surrogate is written as its 3-byte form (what a key compare needs: it can only
 * equal the same lone surrogate). */
static Py_ssize_t unescape(const char *ks, const char *ke, char *out, Py_ssize_t cap) {
    Py_ssize_t n = 0;
    while (ks < ke) {
        unsigned cp;
        if (*ks != '\\') {
            if (n >= cap) return -1;
            out[n++] = *ks++;
            continue;
        }
        if (ke - ks < 2) return -1;
        char e = ks[1];
        ks += 2;
        int simple = escaped_char(e);
        if (simple >= 0) cp = (unsigned)simple;
        else if (e == 'u') {
            if (!hex4(ks, ke, &cp)) return -1;
            ks += 4;
            unsigned lo;
            if (cp >= 0xD800 && cp < 0xDC00 && ke - ks >= 6 && ks[0] == '\\' && ks[1] == 'u'
                && hex4(ks + 2, ke, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                ks += 6;
            }
        } else return -1;
        if (n + 4 > cap) return -1;
        n += utf8_put(cp, out + n);
    }
    return n;
}

static int key_is(const char *ks, const char *ke, span want) {
    /* ks, ke: the key's text between its quotes, compared with its escapes decoded ("kid\u0073"
     * is the key "kids", as DuckDB reads it) */
    if (!memchr(ks, '\\', (size_t)(ke - ks))) return ke - ks == want.n && memcmp(ks, want.s, want.n) == 0;
    if (ke - ks < want.n) return 0;  /* an escape never makes a key longer */
    char small[256];
    char *buf = small;
    Py_ssize_t cap = want.n + 4;  /* one more character than the key: a longer key differs */
    if (cap > (Py_ssize_t)sizeof small) { buf = PyMem_RawMalloc(cap); if (!buf) return 0; }
    Py_ssize_t n = unescape(ks, ke, buf, cap);
    int same = n == want.n && memcmp(buf, want.s, want.n) == 0;
    if (buf != small) PyMem_RawFree(buf);
    return same;
}

/* key_is for a key whose text was checked once for escapes (``esc``): a key without one (nearly
 * every key) is compared by length and bytes only. */
static inline int key_eq(const char *ks, const char *ke, int esc, span want) {
    if (!esc) return ke - ks == want.n && memcmp(ks, want.s, (size_t)want.n) == 0;
    return key_is(ks, ke, want);
}

#define MAXKIDS 32

/* Copy (with ``L``; NULL: only skip) the value at p, minified; the position after it, or NULL.
 * One pass: the value's end is found while copying. */
static const char *copy_value(level *L, const char *p, const char *end) {
    if (p >= end) return NULL;
    char ch = *p;
    if (ch == '"') {
        const char *e = skip_string(p, end);
        if (e && L && put(L, p, e - p)) return NULL;
        return e;
    }
    if (ch != '{' && ch != '[') {
        const char *e = p;
        while (e < end && *e != ',' && *e != '}' && *e != ']' && *e != ' ' && *e != '\n' && *e != '\r' && *e != '\t') e++;
        if (L && put(L, p, e - p)) return NULL;
        return e;
    }
    if (!L) return skip_value(p, end);
    int depth = 0;
    const char *run = p;  /* start of bytes not yet copied */
    while (p < end) {
        ch = *p;
        if (ch == '"') {
            const char *e = skip_string(p, end);
            if (!e) return NULL;
            p = e; continue;
        }
        if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t') {
            if (p > run && put(L, run, p - run)) return NULL;
            while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
            run = p;
            continue;
        }
        if (ch == '{' || ch == '[') depth++;
        else if (ch == '}' || ch == ']') {
            depth--;
            if (depth == 0) {
                p++;
                if (put(L, run, p - run)) return NULL;
                return p;
            }
        }
        p++;
    }
    return NULL;
}

static const char *walk_el(level *levels, int li, const char *p, const char *end, int32_t rec, int32_t pos);

/* Scan the object at p (up to ``end``) once: walk the records of the child lists at ``kids``
 * (paths from part ``at`` on) and, with ``write``, write the object less its typed members
 * (exact values; only at the top: ``typed``) and less the non-empty lists of homed child
 * levels. Returns the position after the object, or NULL. */
static const char *members(level *levels, level *L, const char *p, const char *end,
                           const kid *const *kids, int nkids, int at, const typed_key *typed,
                           int ntyped, int write, int32_t rec) {
    cur c = {p + 1, end, 0};
    int first = 1;
    if (write && put(L, "{", 1)) return NULL;
    for (;;) {
        ws(&c);
        if (c.p >= end) return NULL;
        if (*c.p == '}') { c.p++; break; }
        if (*c.p == ',') { c.p++; ws(&c); }
        if (c.p >= end || *c.p != '"') return NULL;
        const char *ks = c.p;
        const char *ke = skip_string(c.p, end);
        if (!ke) return NULL;
        c.p = ke; ws(&c);
        if (c.p >= end || *c.p != ':') return NULL;
        c.p++; ws(&c);
        const char *vs = c.p;
        if (vs >= end) return NULL;
        /* the key is compared with many: whether it holds an escape is found once */
        const int esc = memchr(ks + 1, '\\', (size_t)(ke - 1 - (ks + 1))) != NULL;
        const kid *list = NULL, *sub[MAXKIDS];
        int nsub = 0;
        for (int i = 0; i < nkids; i++) {
            const kid *k = kids[i];
            if (k->path.nparts <= at || !key_eq(ks + 1, ke - 1, esc, k->path.parts[at])) continue;
            if (k->path.nparts == at + 1) { if (*vs == '[' && !list) list = k; }
            else if (*vs == '{' && nsub < MAXKIDS) sub[nsub++] = k;
        }
        if (list) {
            /* a list of child records: walked, and left out when homed and not empty */
            cur e = {vs + 1, end, 0};
            int32_t j = 0;
            for (;;) {
                ws(&e);
                if (e.p >= end) return NULL;
                if (*e.p == ']') { e.p++; break; }
                if (*e.p == ',') { e.p++; ws(&e); }
                const char *ee = walk_el(levels, list->level, e.p, end, rec, j++);
                if (!ee) return NULL;
                e.p = ee;
            }
            if (!(list->homed && j > 0) && write) {
                if (!first && put(L, ",", 1)) return NULL;
                first = 0;
                if (put(L, ks, ke - ks) || put(L, ":", 1) || !copy_value(L, vs, end)) return NULL;
            }
            c.p = e.p;
            continue;
        }
        if (nsub > 0) {
            if (write) {
                if (!first && put(L, ",", 1)) return NULL;
                first = 0;
                if (put(L, ks, ke - ks) || put(L, ":", 1)) return NULL;
            }
            const char *ve = members(levels, L, vs, end, sub, nsub, at + 1, NULL, 0, write, rec);
            if (!ve) return NULL;
            c.p = ve;
            continue;
        }
        int drop = 0;
        const char *ve = NULL;
        for (int i = 0; i < ntyped; i++) {
            if (!key_eq(ks + 1, ke - 1, esc, typed[i].key)) continue;
            ve = skip_value(vs, end);
            if (!ve) return NULL;
            drop = exact(&typed[i], vs, ve);
            break;
        }
        if (drop || !write) {
            c.p = ve ? ve : skip_value(vs, end);
            if (!c.p) return NULL;
            continue;
        }
        if (!first && put(L, ",", 1)) return NULL;
        first = 0;
        if (put(L, ks, ke - ks) || put(L, ":", 1)) return NULL;
        c.p = copy_value(L, vs, end);
        if (!c.p) return NULL;
    }
    if (write && put(L, "}", 1)) return NULL;
    return c.p;
}

static const char *walk_el(level *levels, int li, const char *p, const char *end, int32_t rec, int32_t pos) {
    level *L = &levels[li];
    if (L->rows + 1 >= L->rcap) {
        Py_ssize_t cap = L->rcap ? L->rcap * 2 : 1024;
        int64_t *o = PyMem_RawRealloc(L->offsets, (cap + 1) * sizeof(int64_t));
        if (!o) return NULL;
        L->offsets = o;
        int32_t *r = PyMem_RawRealloc(L->rec, cap * sizeof(int32_t));
        if (!r) return NULL;
        L->rec = r;
        int32_t *s = PyMem_RawRealloc(L->pos, cap * sizeof(int32_t));
        if (!s) return NULL;
        L->pos = s;
        if (L->rcap == 0) L->offsets[0] = 0;
        L->rcap = cap;
    }
    const char *q;
    if (p < end && *p == '{') {
        const kid *top[MAXKIDS];
        int n = L->nkids < MAXKIDS ? L->nkids : MAXKIDS;
        for (int i = 0; i < n; i++) top[i] = &L->kids[i];
        if (L->homed && L->whole && put(L, "{}", 2)) return NULL;
        q = members(levels, L, p, end, top, n, 0, L->typed, L->ntyped, L->homed && !L->whole, rec);
    } else {
        q = copy_value(L->homed ? L : NULL, p, end);
    }
    if (!q) return NULL;
    L->rec[L->rows] = rec; L->pos[L->rows] = pos;
    L->rows++;
    L->offsets[L->rows] = L->len;
    return q;
}

static int parse_kpath(PyObject *seq, kpath *out) {
    Py_ssize_t n = PySequence_Size(seq);
    if (n < 0 || n > 8) { PyErr_SetString(PyExc_ValueError, "paths are at most 8 keys deep"); return -1; }
    out->nparts = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PySequence_GetItem(seq, i);
        if (!b) return -1;
        char *s; Py_ssize_t len;
        if (PyBytes_AsStringAndSize(b, &s, &len)) { Py_DECREF(b); return -1; }
        out->parts[i].s = s; out->parts[i].n = len;
        Py_DECREF(b);  /* the plan keeps the bytes alive */
    }
    return 0;
}

static void free_levels(level *levels, int n) {
    if (!levels) return;
    for (int i = 0; i < n; i++) {
        PyMem_RawFree(levels[i].typed); PyMem_RawFree(levels[i].kids);
        PyMem_RawFree(levels[i].buf); PyMem_RawFree(levels[i].offsets);
        PyMem_RawFree(levels[i].rec); PyMem_RawFree(levels[i].pos);
    }
    PyMem_RawFree(levels);
}

/*
 * extras(data: buffer, offsets: buffer (int64, n+1), plan) -> list per level of
 *   (extra_data: bytes, extra_offsets: bytes (int64), records: bytes (int32), positions: bytes (int32))
 * plan: list of levels, the record's own level first (index 0), each a tuple
 *   (homed: bool, whole: bool, typed: list[(key: bytes, type: int, elem_type: int, depth: int)],
 *    children: list[(level index: int, path: tuple[bytes], homed: bool)])
 */
static PyObject *extras(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data, offs;
    PyObject *plan;
    if (!PyArg_ParseTuple(args, "y*y*O", &data, &offs, &plan)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t nlevels = PySequence_Size(plan);
    level *levels = nlevels > 0 ? PyMem_RawCalloc(nlevels, sizeof(level)) : NULL;
    if (nlevels <= 0 || !levels) { PyErr_SetString(PyExc_ValueError, "empty plan"); goto done; }
    for (Py_ssize_t i = 0; i < nlevels; i++) {
        PyObject *item = PySequence_GetItem(plan, i);
        if (!item) goto done;
        PyObject *typed, *children;
        int homed, whole;
        if (!PyArg_ParseTuple(item, "ppOO", &homed, &whole, &typed, &children)) {
            Py_DECREF(item); goto done;
        }
        level *L = &levels[i];
        L->homed = homed; L->whole = whole;
        Py_ssize_t nt = PySequence_Size(typed), nc = PySequence_Size(children);
        if (nt < 0 || nc < 0 || nc > MAXKIDS) { PyErr_SetString(PyExc_ValueError, "bad plan"); Py_DECREF(item); goto done; }
        L->typed = PyMem_RawCalloc(nt ? nt : 1, sizeof(typed_key));
        L->kids = PyMem_RawCalloc(nc ? nc : 1, sizeof(kid));
        L->ntyped = (int)nt; L->nkids = (int)nc;
        for (Py_ssize_t k = 0; k < nt; k++) {
            PyObject *t = PySequence_GetItem(typed, k);
            char *s; Py_ssize_t len;
            if (!t || !PyArg_ParseTuple(t, "y#iii", &s, &len, &L->typed[k].type, &L->typed[k].elem_type,
                                        &L->typed[k].depth)) { Py_XDECREF(t); Py_DECREF(item); goto done; }
            L->typed[k].key.s = s; L->typed[k].key.n = len;
            Py_DECREF(t);
        }
        for (Py_ssize_t k = 0; k < nc; k++) {
            PyObject *cp = PySequence_GetItem(children, k), *path;
            int lvl, kh;
            if (!cp || !PyArg_ParseTuple(cp, "iOp", &lvl, &path, &kh) || lvl <= i || lvl >= nlevels
                || parse_kpath(path, &L->kids[k].path)) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad plan");
                Py_XDECREF(cp); Py_DECREF(item); goto done;
            }
            L->kids[k].level = lvl; L->kids[k].homed = kh;
            Py_DECREF(cp);
        }
        Py_DECREF(item);
    }
    {
        const char *base = data.buf;
        const int64_t *o = offs.buf;
        Py_ssize_t n = offs.len / (Py_ssize_t)sizeof(int64_t) - 1;
        int failed = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r = 0; r < n; r++) {
            if (o[r] < 0 || o[r + 1] < o[r] || o[r + 1] > data.len) { failed = 1; break; }
            const char *p = base + o[r], *q = base + o[r + 1];
            while (p < q && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
            while (q > p && (q[-1] == ' ' || q[-1] == '\n' || q[-1] == '\r' || q[-1] == '\t')) q--;
            const char *e = walk_el(levels, 0, p, q, (int32_t)r, -1);
            if (!e) { failed = 1; break; }
            while (e < q && (*e == ' ' || *e == '\n' || *e == '\r' || *e == '\t')) e++;
            if (e != q) { failed = 1; break; }
        }
        Py_END_ALLOW_THREADS
        if (failed) { PyErr_SetString(PyExc_ValueError, "a record could not be walked"); goto done; }
    }
    result = PyList_New(nlevels);
    if (!result) goto done;
    for (Py_ssize_t i = 0; i < nlevels; i++) {
        level *L = &levels[i];
        if (L->rows == 0 && L->offsets == NULL) {
            int64_t zero = 0;
            PyObject *t = Py_BuildValue("(y#y#y#y#)", "", (Py_ssize_t)0, (char *)&zero, (Py_ssize_t)8, "",
                                        (Py_ssize_t)0, "", (Py_ssize_t)0);
            if (!t) { Py_CLEAR(result); goto done; }
            PyList_SET_ITEM(result, i, t);
            continue;
        }
        /* the level's buffers change hands: no copy of the texts */
        PyObject *t = PyTuple_New(4);
        if (!t) { Py_CLEAR(result); goto done; }
        PyList_SET_ITEM(result, i, t);
        PyObject *parts[4] = {own(&L->buf, L->len), own((char **)&L->offsets, (L->rows + 1) * (Py_ssize_t)sizeof(int64_t)),
                              own((char **)&L->rec, L->rows * (Py_ssize_t)sizeof(int32_t)),
                              own((char **)&L->pos, L->rows * (Py_ssize_t)sizeof(int32_t))};
        for (int k = 0; k < 4; k++) {
            if (!parts[k]) { for (int m = k + 1; m < 4; m++) Py_XDECREF(parts[m]); Py_CLEAR(result); goto done; }
            PyTuple_SET_ITEM(t, k, parts[k]);
        }
    }
done:
    free_levels(levels, (int)(nlevels > 0 ? nlevels : 0));
    PyBuffer_Release(&data);
    PyBuffer_Release(&offs);
    return result;
}

/* ---------------------------------------------------------------- duplicate keys */

typedef struct { span *v; Py_ssize_t n, cap; } spans;

static int spans_push(spans *S, const char *s, Py_ssize_t n) {
    if (S->n == S->cap) {
        Py_ssize_t cap = S->cap ? S->cap * 2 : 256;
        span *v = PyMem_RawRealloc(S->v, cap * sizeof(span));
        if (!v) return -1;
        S->v = v; S->cap = cap;
    }
    S->v[S->n].s = s; S->v[S->n].n = n; S->n++;
    return 0;
}

static inline uint64_t span_hash(span k) {
    uint64_t h = 1469598103934665603ULL;  /* FNV-1a */
    for (Py_ssize_t i = 0; i < k.n; i++) { h ^= (unsigned char)k.s[i]; h *= 1099511628211ULL; }
    return h;
}

/* Whether the keys k[0..n) (texts as written) hold one twice. Few keys: compared pairwise; more:
 * through an open-addressing set of their indexes in ``slots`` (room for ``nslots``, a power of
 * two of at least 2n, -1 when free): one pass, where sorting them cost n log n compares for each
 * of the export's wide objects. */
static int any_twice(const span *k, Py_ssize_t n, Py_ssize_t *slots, Py_ssize_t nslots) {
    if (n < 2) return 0;
    if (n <= 16) {
        for (Py_ssize_t i = 1; i < n; i++)
            for (Py_ssize_t j = 0; j < i; j++)
                if (k[i].n == k[j].n && memcmp(k[i].s, k[j].s, (size_t)k[i].n) == 0) return 1;
        return 0;
    }
    for (Py_ssize_t i = 0; i < nslots; i++) slots[i] = -1;
    Py_ssize_t mask = nslots - 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = (Py_ssize_t)(span_hash(k[i]) & (uint64_t)mask);
        for (;;) {
            Py_ssize_t j = slots[at];
            if (j < 0) { slots[at] = i; break; }
            if (k[j].n == k[i].n && memcmp(k[j].s, k[i].s, (size_t)k[i].n) == 0) return 1;
            at = (at + 1) & mask;
        }
    }
    return 0;
}

/* 1 when the JSON value at p..end holds an object with a key twice, or a key written with an
 * escape (only a full decode can tell: the caller checks those records itself); 0 when not; -1
 * when out of memory. Iterative: any nesting depth. */
static int has_dup(const char *p, const char *end, spans *keys, Py_ssize_t **slots,
                   Py_ssize_t *slots_cap, Py_ssize_t **stack, Py_ssize_t *stack_cap) {
    Py_ssize_t depth = 0;
    keys->n = 0;
    while (p < end) {
        while (p < end && !special[(unsigned char)*p]) p++;
        if (p >= end) break;
        char ch = *p;
        if (ch == '"') {
            const char *e = skip_string(p, end);
            if (!e) return 0;  /* not valid JSON: DuckDB names it */
            const char *c = e;
            while (c < end && (*c == ' ' || *c == '\n' || *c == '\r' || *c == '\t')) c++;
            if (c < end && *c == ':') {
                if (memchr(p + 1, '\\', (size_t)(e - 1 - (p + 1)))) return 1;
                if (spans_push(keys, p + 1, e - 1 - (p + 1))) return -1;
            }
            p = e;
            continue;
        }
        if (ch == '{' || ch == '[') {
            if (depth == *stack_cap) {
                Py_ssize_t cap = *stack_cap ? *stack_cap * 2 : 64;
                Py_ssize_t *st = PyMem_RawRealloc(*stack, cap * sizeof(Py_ssize_t));
                if (!st) return -1;
                *stack = st; *stack_cap = cap;
            }
            (*stack)[depth++] = ch == '{' ? keys->n : -1;
        } else if (depth > 0) {  /* a closing bracket */
            Py_ssize_t base = (*stack)[--depth];
            if (base >= 0) {
                Py_ssize_t n = keys->n - base, nslots = 32;
                while (nslots < 2 * n) nslots *= 2;
                if (n > 16 && *slots_cap < nslots) {
                    Py_ssize_t *v = PyMem_RawRealloc(*slots, nslots * sizeof(Py_ssize_t));
                    if (!v) return -1;
                    *slots = v; *slots_cap = nslots;
                }
                if (any_twice(keys->v + base, n, *slots, nslots)) return 1;
                keys->n = base;
            }
        }
        p++;
    }
    return 0;
}

/*
 * dup_keys(data: buffer, offsets: buffer (int64, n+1)) -> list[int]: the records (indexes) holding
 * an object with a key twice (or a key with an escape, to be checked by the caller).
 */
static PyObject *dup_keys(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data, offs;
    if (!PyArg_ParseTuple(args, "y*y*", &data, &offs)) return NULL;
    const char *base = data.buf;
    const int64_t *o = offs.buf;
    Py_ssize_t n = offs.len / (Py_ssize_t)sizeof(int64_t) - 1;
    spans keys = {0};
    Py_ssize_t *stack = NULL, stack_cap = 0, *slots = NULL, slots_cap = 0;
    Py_ssize_t *found = n > 0 ? PyMem_RawMalloc(n * sizeof(Py_ssize_t)) : NULL;
    Py_ssize_t nfound = 0;
    int failed = n > 0 && !found;
    if (!failed) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r = 0; r < n; r++) {
            if (o[r] < 0 || o[r + 1] < o[r] || o[r + 1] > data.len) { failed = 2; break; }
            int d = has_dup(base + o[r], base + o[r + 1], &keys, &slots, &slots_cap, &stack, &stack_cap);
            if (d < 0) { failed = 1; break; }
            if (d) found[nfound++] = r;
        }
        Py_END_ALLOW_THREADS
    }
    PyObject *result = NULL;
    if (failed == 1) PyErr_NoMemory();
    else if (failed == 2) PyErr_SetString(PyExc_ValueError, "bad offsets");
    else if ((result = PyList_New(nfound)) != NULL) {
        for (Py_ssize_t i = 0; i < nfound; i++) {
            PyObject *v = PyLong_FromSsize_t(found[i]);
            if (!v) { Py_CLEAR(result); break; }
            PyList_SET_ITEM(result, i, v);
        }
    }
    PyMem_RawFree(found); PyMem_RawFree(keys.v); PyMem_RawFree(slots); PyMem_RawFree(stack);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offs);
    return result;
}

static PyMethodDef methods[] = {
    {"extras", extras, METH_VARARGS, "The _extra texts of a batch of records (see etl/stage/extra.py)."},
    {"dup_keys", dup_keys, METH_VARARGS, "The records holding an object with a key twice."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_extra", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__extra(void) {
    special[(unsigned char)'"'] = special[(unsigned char)'{'] = special[(unsigned char)'}'] = 1;
    special[(unsigned char)'['] = special[(unsigned char)']'] = 1;
    if (owned_ready("etl.stage._extra.Owned") < 0) return NULL;
    return PyModule_Create(&module);
}
