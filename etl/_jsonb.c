/*
 * etl._jsonb: JSON texts as PostgreSQL's jsonb prints them, at the speed of a byte scan.
 *
 * PostgreSQL keeps a jsonb value parsed: on the way out (jsonb_out, and the binary COPY's
 * jsonb_send) it writes object keys ordered by length and then bytes, one member a key (the last
 * written wins), ", " and ": " between the parts, every number as numeric prints it (no exponent,
 * as many decimals as the input's scale less its exponent, no minus sign on zero) and strings with
 * its own escapes. pg_text rewrites each text of a batch into that form, so a staged jsonb column
 * and the same column read back from the database compare as plain strings. The rules are those of
 * etl/jsonb.py (the pure Python version, used when this module is not built), and tests check both
 * against what PostgreSQL itself prints.
 *
 * A text it cannot rewrite (not valid JSON, a \u0000 escape, a number beyond what numeric holds) is
 * returned as it is: the comparison then falls back to comparing by meaning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_jsonesc.h"

typedef struct { char *b; Py_ssize_t len, cap; } buf;

static int reserve(buf *B, Py_ssize_t more) {
    if (B->len + more <= B->cap) return 0;
    Py_ssize_t cap = B->cap ? B->cap : 4096;
    while (cap < B->len + more) cap *= 2;
    char *nb = PyMem_RawRealloc(B->b, (size_t)cap);
    if (!nb) return -1;
    B->b = nb; B->cap = cap;
    return 0;
}

static int putn(buf *B, const char *s, Py_ssize_t n) {
    if (reserve(B, n)) return -1;
    memcpy(B->b + B->len, s, (size_t)n);
    B->len += n;
    return 0;
}

typedef struct {
    Py_ssize_t kofs, klen;   /* the key's bytes (escapes decoded) in the key arena */
    Py_ssize_t start, len;   /* the member as written ("key": value) in the output */
    Py_ssize_t order;        /* its place in the object, so the last of equal keys wins */
} member;

typedef struct {
    buf out, keys, tmp;
    member *m; Py_ssize_t nm, mcap;
    int depth;
} state;

enum { OK = 0, BAD = 1, NOMEM = 2 };

static const char *ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* The string starting at p (its opening quote): its bytes, escapes decoded, appended to D;
 * returns the position after its closing quote, or NULL (*err set). */
static const char *string_bytes(const char *p, const char *end, buf *D, int *err) {
    p++;
    for (;;) {
        const char *run = p;
        while (p < end && *p != '"' && *p != '\\') {
            if ((unsigned char)*p < 0x20) { *err = BAD; return NULL; }
            p++;
        }
        if (p > run && putn(D, run, p - run)) { *err = NOMEM; return NULL; }
        if (p >= end) { *err = BAD; return NULL; }
        if (*p == '"') return p + 1;
        if (end - p < 2) { *err = BAD; return NULL; }
        char e = p[1];
        p += 2;
        unsigned cp;
        int simple = escaped_char(e);
        if (simple >= 0) cp = (unsigned)simple;
        else if (e == 'u') {
            if (!hex4(p, end, &cp)) { *err = BAD; return NULL; }
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00) {
                unsigned lo;
                if (end - p >= 6 && p[0] == '\\' && p[1] == 'u' && hex4(p + 2, end, &lo)
                    && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                } else { *err = BAD; return NULL; }   /* jsonb refuses a lone surrogate */
            } else if (cp >= 0xDC00 && cp < 0xE000) { *err = BAD; return NULL; }
            if (cp == 0) { *err = BAD; return NULL; }  /* and \u0000 */
        } else { *err = BAD; return NULL; }
        char u[4];
        int n = utf8_put(cp, u);
        if (putn(D, u, n)) { *err = NOMEM; return NULL; }
    }
}

/* s[0..n) as a quoted string with PostgreSQL's escapes (escape_json). */
static int put_escaped(buf *B, const char *s, Py_ssize_t n) {
    if (reserve(B, n + 2)) return -1;
    B->b[B->len++] = '"';
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t run = i;
        while (i < n && (unsigned char)s[i] >= 0x20 && s[i] != '"' && s[i] != '\\') i++;
        if (i > run && putn(B, s + run, i - run)) return -1;
        if (i >= n) break;
        unsigned char c = (unsigned char)s[i++];
        char esc[8];
        int k;
        switch (c) {
        case '\b': k = 2; memcpy(esc, "\\b", 2); break;
        case '\f': k = 2; memcpy(esc, "\\f", 2); break;
        case '\n': k = 2; memcpy(esc, "\\n", 2); break;
        case '\r': k = 2; memcpy(esc, "\\r", 2); break;
        case '\t': k = 2; memcpy(esc, "\\t", 2); break;
        case '"': k = 2; memcpy(esc, "\\\"", 2); break;
        case '\\': k = 2; memcpy(esc, "\\\\", 2); break;
        default: {
            static const char hex[] = "0123456789abcdef";
            esc[0] = '\\'; esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = hex[c >> 4]; esc[5] = hex[c & 15]; k = 6;
        }
        }
        if (putn(B, esc, k)) return -1;
    }
    return putn(B, "\"", 1);
}

/* A JSON number at p as numeric prints it; NULL (err) when it is not one or numeric refuses it. */
static const char *number(const char *p, const char *end, buf *B, int *err) {
    int neg = 0;
    if (p < end && *p == '-') { neg = 1; p++; }
    const char *ip = p;
    if (p >= end || *p < '0' || *p > '9') { *err = BAD; return NULL; }
    if (*p == '0') p++;
    else while (p < end && *p >= '0' && *p <= '9') p++;
    const char *ie = p, *fp = p, *fe = p;
    if (p < end && *p == '.') {
        fp = ++p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        fe = p;
        if (fe == fp) { *err = BAD; return NULL; }
    }
    long e = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) { eneg = *p == '-'; p++; }
        if (p >= end || *p < '0' || *p > '9') { *err = BAD; return NULL; }
        while (p < end && *p >= '0' && *p <= '9') {
            if (e < 100000) e = e * 10 + (*p - '0');
            p++;
        }
        if (eneg) e = -e;
    }
    Py_ssize_t ni = ie - ip, nf = fe - fp, nd = ni + nf;
    /* digit i of int+frac */
#define DIGIT(i) ((i) < ni ? ip[i] : fp[(i) - ni])
    Py_ssize_t point = ni + e;            /* digits before the decimal point */
    Py_ssize_t dscale = nf - e > 0 ? nf - e : 0;
    /* numeric holds 131,072 digits before the point and 16,383 after */
    if (point > 131072 || dscale > 16383) { *err = BAD; return NULL; }
    int zero = 1;
    for (Py_ssize_t i = 0; i < nd; i++) if (DIGIT(i) != '0') { zero = 0; break; }
    Py_ssize_t need = (point > 0 ? point : 1) + dscale + 3;
    if (reserve(B, need)) { *err = NOMEM; return NULL; }
    char *o = B->b + B->len;
    Py_ssize_t w = 0;
    if (neg && !zero) o[w++] = '-';
    /* the integer part, leading zeros dropped */
    Py_ssize_t first = w;
    for (Py_ssize_t i = 0; i < point; i++) {
        char d = i < nd ? DIGIT(i) : '0';
        if (w == first && d == '0') continue;
        o[w++] = d;
    }
    if (w == first) o[w++] = '0';
    if (dscale > 0) {
        o[w++] = '.';
        for (Py_ssize_t i = point; i < point + dscale; i++) o[w++] = i >= 0 && i < nd ? DIGIT(i) : '0';
    }
#undef DIGIT
    B->len += w;
    return p;
}

static const char *value(state *S, const char *p, const char *end, int *err);

static int by_key(const void *a, const void *b, void *keys) {
    const member *x = a, *y = b;
    if (x->klen != y->klen) return x->klen < y->klen ? -1 : 1;
    int c = memcmp((char *)keys + x->kofs, (char *)keys + y->kofs, (size_t)x->klen);
    if (c) return c;
    return x->order < y->order ? -1 : (x->order > y->order);
}

/* qsort_r is not everywhere: a small merge sort over the members, with the key arena. */
static void msort(member *a, member *t, Py_ssize_t n, const char *keys) {
    if (n < 2) return;
    if (n <= 8) {
        for (Py_ssize_t i = 1; i < n; i++) {
            member v = a[i];
            Py_ssize_t j = i;
            while (j > 0 && by_key(&a[j - 1], &v, (void *)keys) > 0) { a[j] = a[j - 1]; j--; }
            a[j] = v;
        }
        return;
    }
    Py_ssize_t h = n / 2;
    msort(a, t, h, keys);
    msort(a + h, t, n - h, keys);
    if (by_key(&a[h - 1], &a[h], (void *)keys) <= 0) return;
    memcpy(t, a, (size_t)n * sizeof(member));
    Py_ssize_t i = 0, j = h, k = 0;
    while (i < h && j < n) a[k++] = by_key(&t[i], &t[j], (void *)keys) <= 0 ? t[i++] : t[j++];
    while (i < h) a[k++] = t[i++];
    while (j < n) a[k++] = t[j++];
}

static const char *object(state *S, const char *p, const char *end, int *err) {
    Py_ssize_t start = S->out.len, base = S->nm, kbase = S->keys.len;
    p = ws(p + 1, end);
    if (p < end && *p == '}') {
        if (putn(&S->out, "{}", 2)) { *err = NOMEM; return NULL; }
        return p + 1;
    }
    Py_ssize_t order = 0;
    for (;;) {
        if (p >= end || *p != '"') { *err = BAD; return NULL; }
        Py_ssize_t kofs = S->keys.len;
        p = string_bytes(p, end, &S->keys, err);
        if (!p) return NULL;
        p = ws(p, end);
        if (p >= end || *p != ':') { *err = BAD; return NULL; }
        p = ws(p + 1, end);
        Py_ssize_t mstart = S->out.len;
        if (put_escaped(&S->out, S->keys.b + kofs, S->keys.len - kofs) || putn(&S->out, ": ", 2)) {
            *err = NOMEM; return NULL;
        }
        p = value(S, p, end, err);
        if (!p) return NULL;
        if (S->nm == S->mcap) {
            Py_ssize_t cap = S->mcap ? S->mcap * 2 : 64;
            member *nm = PyMem_RawRealloc(S->m, (size_t)cap * sizeof(member));
            if (!nm) { *err = NOMEM; return NULL; }
            S->m = nm; S->mcap = cap;
        }
        S->m[S->nm++] = (member){kofs, S->keys.len - kofs, mstart, S->out.len - mstart, order++};
        p = ws(p, end);
        if (p < end && *p == ',') { p = ws(p + 1, end); continue; }
        if (p < end && *p == '}') { p++; break; }
        *err = BAD; return NULL;
    }
    Py_ssize_t n = S->nm - base;
    member *ms = S->m + base;
    /* scratch for the sort: the tail of the members array */
    if (S->nm + n > S->mcap) {
        Py_ssize_t cap = S->mcap;
        while (cap < S->nm + n) cap *= 2;
        member *nm = PyMem_RawRealloc(S->m, (size_t)cap * sizeof(member));
        if (!nm) { *err = NOMEM; return NULL; }
        S->m = nm; S->mcap = cap; ms = S->m + base;
    }
    msort(ms, S->m + S->nm, n, S->keys.b);
    S->tmp.len = 0;
    if (putn(&S->tmp, "{", 1)) { *err = NOMEM; return NULL; }
    int wrote = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* of equal keys (adjacent, in written order), the last one wins */
        if (i + 1 < n && ms[i].klen == ms[i + 1].klen
            && memcmp(S->keys.b + ms[i].kofs, S->keys.b + ms[i + 1].kofs, (size_t)ms[i].klen) == 0)
            continue;
        if ((wrote && putn(&S->tmp, ", ", 2)) || putn(&S->tmp, S->out.b + ms[i].start, ms[i].len)) {
            *err = NOMEM; return NULL;
        }
        wrote = 1;
    }
    if (putn(&S->tmp, "}", 1)) { *err = NOMEM; return NULL; }
    S->out.len = start;
    if (putn(&S->out, S->tmp.b, S->tmp.len)) { *err = NOMEM; return NULL; }
    S->nm = base;
    S->keys.len = kbase;
    return p;
}

static const char *value(state *S, const char *p, const char *end, int *err) {
    if (p >= end) { *err = BAD; return NULL; }
    if (++S->depth > 1000) { S->depth--; *err = BAD; return NULL; }  /* deeper: compared by meaning */
    const char *r;
    switch (*p) {
    case '{': r = object(S, p, end, err); break;
    case '[': {
        p = ws(p + 1, end);
        if (putn(&S->out, "[", 1)) { *err = NOMEM; r = NULL; break; }
        if (p < end && *p == ']') { r = p + 1; if (putn(&S->out, "]", 1)) { *err = NOMEM; r = NULL; } break; }
        for (;;) {
            p = value(S, p, end, err);
            if (!p) { r = NULL; break; }
            p = ws(p, end);
            if (p < end && *p == ',') {
                if (putn(&S->out, ", ", 2)) { *err = NOMEM; r = NULL; break; }
                p = ws(p + 1, end);
                continue;
            }
            if (p < end && *p == ']') { r = p + 1; if (putn(&S->out, "]", 1)) { *err = NOMEM; r = NULL; } break; }
            *err = BAD; r = NULL; break;
        }
        break;
    }
    case '"': {
        Py_ssize_t k = S->keys.len;
        p = string_bytes(p, end, &S->keys, err);
        if (!p) { r = NULL; break; }
        if (put_escaped(&S->out, S->keys.b + k, S->keys.len - k)) { *err = NOMEM; r = NULL; break; }
        S->keys.len = k;
        r = p;
        break;
    }
    case 't':
        if (end - p >= 4 && memcmp(p, "true", 4) == 0) { r = putn(&S->out, "true", 4) ? NULL : p + 4; }
        else { *err = BAD; r = NULL; }
        break;
    case 'f':
        if (end - p >= 5 && memcmp(p, "false", 5) == 0) { r = putn(&S->out, "false", 5) ? NULL : p + 5; }
        else { *err = BAD; r = NULL; }
        break;
    case 'n':
        if (end - p >= 4 && memcmp(p, "null", 4) == 0) { r = putn(&S->out, "null", 4) ? NULL : p + 4; }
        else { *err = BAD; r = NULL; }
        break;
    default: r = number(p, end, &S->out, err); break;
    }
    S->depth--;
    return r;
}

/*
 * pg_text(data: buffer, offsets: buffer (int64, n+1)) -> (bytes data, bytes offsets (int64, n+1)):
 * each text in PostgreSQL's jsonb form, or as it was when it cannot be rewritten.
 */
static PyObject *pg_text(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data, offs;
    if (!PyArg_ParseTuple(args, "y*y*", &data, &offs)) return NULL;
    const char *base = data.buf;
    const int64_t *o = offs.buf;
    Py_ssize_t n = offs.len / (Py_ssize_t)sizeof(int64_t) - 1;
    if (n < 0) n = 0;
    state S = {0};
    int64_t *out_offs = PyMem_RawMalloc((size_t)(n + 1) * sizeof(int64_t));
    int failed = !out_offs;
    if (!failed) {
        Py_BEGIN_ALLOW_THREADS
        failed = reserve(&S.out, data.len + data.len / 4 + 16) ? 1 : 0;
        out_offs[0] = 0;
        for (Py_ssize_t r = 0; r < n && !failed; r++) {
            if (o[r] < 0 || o[r + 1] < o[r] || o[r + 1] > data.len) { failed = 2; break; }
            const char *p = base + o[r], *end = base + o[r + 1];
            Py_ssize_t at = S.out.len;
            int err = OK;
            S.nm = 0; S.keys.len = 0; S.depth = 0;
            const char *q = value(&S, ws(p, end), end, &err);
            if (q && ws(q, end) != end) err = BAD;
            if (err == NOMEM) { failed = 1; break; }
            if (err != OK) {   /* not rewritable: kept as it is */
                S.out.len = at;
                if (putn(&S.out, p, end - p)) { failed = 1; break; }
            }
            out_offs[r + 1] = S.out.len;
        }
        Py_END_ALLOW_THREADS
    }
    PyObject *result = NULL;
    if (failed == 1) PyErr_NoMemory();
    else if (failed == 2) PyErr_SetString(PyExc_ValueError, "bad offsets");
    else result = Py_BuildValue("(y#y#)", S.out.b ? S.out.b : "", S.out.len,
                                (const char *)out_offs, (Py_ssize_t)((n + 1) * (Py_ssize_t)sizeof(int64_t)));
    PyMem_RawFree(out_offs); PyMem_RawFree(S.out.b); PyMem_RawFree(S.keys.b);
    PyMem_RawFree(S.tmp.b); PyMem_RawFree(S.m);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offs);
    return result;
}

static PyMethodDef methods[] = {
    {"pg_text", pg_text, METH_VARARGS, "JSON texts as PostgreSQL's jsonb prints them (see etl/jsonb.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jsonb", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jsonb(void) { return PyModule_Create(&module); }
