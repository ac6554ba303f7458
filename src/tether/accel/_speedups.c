/* tether.accel._speedups: compiled versions of tether/accel/_python.py.
 *
 * _python.py is the specification: same names, signatures, accepted types and exceptions.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Get a contiguous view of obj; a non-contiguous memoryview is copied into *copy. */
static int
get_contiguous(PyObject *obj, Py_buffer *view, PyObject **copy)
{
    *copy = NULL;
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) == 0) {
        return 0;
    }
    if (!PyMemoryView_Check(obj)) {
        return -1;
    }
    PyErr_Clear();
    *copy = PyBytes_FromObject(obj);
    if (*copy == NULL) {
        return -1;
    }
    if (PyObject_GetBuffer(*copy, view, PyBUF_SIMPLE) != 0) {
        Py_CLEAR(*copy);
        return -1;
    }
    return 0;
}

static PyObject *
apply_mask(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    PyObject *data_copy, *mask_copy, *result = NULL;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "apply_mask() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (get_contiguous(args[0], &data, &data_copy) < 0) {
        return NULL;
    }
    if (get_contiguous(args[1], &mask, &mask_copy) < 0) {
        goto release_data;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must contain 4 bytes");
        goto release_mask;
    }

    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result == NULL) {
        goto release_mask;
    }
    {
        const unsigned char *in = (const unsigned char *)data.buf;
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
        const unsigned char *m = (const unsigned char *)mask.buf;
        Py_ssize_t n = data.len, i = 0;
        uint32_t m32;
        uint64_t m64;

        memcpy(&m32, m, 4);
        m64 = ((uint64_t)m32 << 32) | m32;
        /* 8 bytes at a time; memcpy keeps unaligned access defined and compiles to a load. */
        for (; i + 8 <= n; i += 8) {
            uint64_t chunk;
            memcpy(&chunk, in + i, 8);
            chunk ^= m64;
            memcpy(out + i, &chunk, 8);
        }
        for (; i < n; i++) {
            out[i] = in[i] ^ m[i & 3];
        }
    }

release_mask:
    PyBuffer_Release(&mask);
    Py_XDECREF(mask_copy);
release_data:
    PyBuffer_Release(&data);
    Py_XDECREF(data_copy);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, mask) -> bytes\n\nXOR data with the 4-byte mask repeated "
     "(RFC 6455 section 5.3)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "tether.accel._speedups",
    "Compiled hot leaf functions; tether/accel/_python.py is their specification.", -1,
    speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&speedups_module);
}
