/*
 * A buffer a C extension filled, handed to Python as it is (no copy into a bytes object):
 * read-only through the buffer protocol (Arrow wraps it with pa.py_buffer), freed with the
 * object. Used by etl/stage/_extra.c and etl/transform/_reorder.c.
 */
#ifndef ETL_OWNED_H
#define ETL_OWNED_H

#include <Python.h>

typedef struct { PyObject_HEAD char *buf; Py_ssize_t len; } Owned;

static int owned_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    Owned *o = (Owned *)self;
    return PyBuffer_FillInfo(view, self, o->buf ? o->buf : "", o->len, 1, flags);
}

static void owned_dealloc(PyObject *self) {
    PyMem_RawFree(((Owned *)self)->buf);
    Py_TYPE(self)->tp_free(self);
}

static PyBufferProcs owned_as_buffer = {owned_getbuffer, NULL};

static PyTypeObject OwnedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_basicsize = sizeof(Owned),
    .tp_dealloc = owned_dealloc,
    .tp_as_buffer = &owned_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A buffer a C extension wrote, owned by this object.",
};

/* Called once by the module's init, with the type's dotted name. */
static int owned_ready(const char *name) {
    OwnedType.tp_name = name;
    return PyType_Ready(&OwnedType);
}

/* ``*buf`` (``len`` bytes, from PyMem_RawMalloc or NULL) as an Owned object; ``*buf`` is taken
 * (set to NULL) on success. */
static PyObject *own(char **buf, Py_ssize_t len) {
    Owned *o = PyObject_New(Owned, &OwnedType);
    if (!o) return NULL;
    o->buf = *buf; o->len = len;
    *buf = NULL;
    return (PyObject *)o;
}

#endif
