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

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define TETHER_AVX2 1
/* Set at import when the CPU has AVX2 (the build targets baseline x86-64, SSE2). */
static int have_avx2;

/* XOR the first n - n % 32 bytes with the mask m32 (the 4 mask bytes as they lie in memory):
 * 32 bytes per instruction, four at a time. Returns how many bytes it did. */
__attribute__((target("avx2"))) static Py_ssize_t
xor_mask_avx2(const unsigned char *in, unsigned char *out, Py_ssize_t n, uint32_t m32)
{
    const __m256i m = _mm256_set1_epi32((int)m32);
    Py_ssize_t i = 0;

    for (; i + 128 <= n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(in + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(in + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(in + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(in + i + 96));
        _mm256_storeu_si256((__m256i *)(out + i), _mm256_xor_si256(a, m));
        _mm256_storeu_si256((__m256i *)(out + i + 32), _mm256_xor_si256(b, m));
        _mm256_storeu_si256((__m256i *)(out + i + 64), _mm256_xor_si256(c, m));
        _mm256_storeu_si256((__m256i *)(out + i + 96), _mm256_xor_si256(d, m));
    }
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(in + i));
        _mm256_storeu_si256((__m256i *)(out + i), _mm256_xor_si256(a, m));
    }
    return i;
}
#endif

/* XOR n bytes from in into out with the 4-byte mask m, starting at mask offset 0. */
static void
xor_mask(const unsigned char *in, unsigned char *out, Py_ssize_t n, const unsigned char *m)
{
    Py_ssize_t i = 0;
    uint32_t m32;
    uint64_t m64;

    memcpy(&m32, m, 4);
#ifdef TETHER_AVX2
    if (have_avx2 && n >= 256) { /* a multiple of 32 bytes: the mask phase stays at 0 */
        i = xor_mask_avx2(in, out, n, m32);
    }
#endif
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
    xor_mask((const unsigned char *)data.buf, (unsigned char *)PyBytes_AS_STRING(result),
             data.len, (const unsigned char *)mask.buf);

release_mask:
    PyBuffer_Release(&mask);
    Py_XDECREF(mask_copy);
release_data:
    PyBuffer_Release(&data);
    Py_XDECREF(data_copy);
    return result;
}

/* A new instance of a tuple subclass with one item (a NamedTuple event), as tuple.__new__
 * would build it, without the Python-level __new__ call. Steals a reference to item. */
static PyObject *
new_event(PyTypeObject *type, PyObject *item)
{
    PyObject *event = type->tp_alloc(type, 1);
    if (event == NULL) {
        Py_DECREF(item);
        return NULL;
    }
    PyTuple_SET_ITEM(event, 0, item);
    return event;
}

#define STACK_TEXT 1024

static PyObject *
parse_messages(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t pos, end, limit;
    int masked;
    PyObject *events;
    PyTypeObject *text_type, *binary_type;
    unsigned char stack[STACK_TEXT];

    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "parse_messages() takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    masked = PyObject_IsTrue(args[2]);
    if (masked < 0) {
        return NULL;
    }
    limit = args[3] == Py_None ? -1 : PyLong_AsSsize_t(args[3]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    events = args[4];
    if (!PyList_Check(events)) {
        PyErr_SetString(PyExc_TypeError, "events must be a list");
        return NULL;
    }
    if (!PyType_Check(args[5]) || !PyType_IsSubtype((PyTypeObject *)args[5], &PyTuple_Type) ||
        !PyType_Check(args[6]) || !PyType_IsSubtype((PyTypeObject *)args[6], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "event types must be tuple subclasses");
        return NULL;
    }
    text_type = (PyTypeObject *)args[5];
    binary_type = (PyTypeObject *)args[6];
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    end = view.len;
    if (pos < 0 || pos > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pos out of range");
        return NULL;
    }

    {
        const unsigned char *buf = (const unsigned char *)view.buf;
        while (end - pos >= 2) {
            unsigned char b0 = buf[pos], b1 = buf[pos + 1];
            uint64_t length = b1 & 0x7F;
            Py_ssize_t header = 2, n;
            const unsigned char *payload, *mask = NULL;
            PyObject *message, *event;
            int is_text;

            /* FIN set, RSV clear, text or binary: a whole message in one plain frame. */
            if (b0 != 0x81 && b0 != 0x82) {
                break;
            }
            if ((b1 & 0x80) != (masked ? 0x80 : 0)) {
                break;
            }
            if (length == 126) {
                if (end - pos < 4) {
                    break;
                }
                length = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
                if (length < 126) {
                    break;
                }
                header = 4;
            }
            else if (length == 127) {
                int i;
                if (end - pos < 10) {
                    break;
                }
                length = 0;
                for (i = 0; i < 8; i++) {
                    length = (length << 8) | buf[pos + 2 + i];
                }
                if ((length >> 63) || length < 0x10000) {
                    break;
                }
                header = 10;
            }
            if (limit >= 0 && length > (uint64_t)limit) {
                break;
            }
            if (masked) {
                header += 4;
            }
            if (end - pos < header || (uint64_t)(end - pos - header) < length) {
                break; /* incomplete */
            }
            n = (Py_ssize_t)length;
            if (masked) {
                mask = buf + pos + header - 4;
            }
            payload = buf + pos + header;
            is_text = b0 == 0x81;
            if (!is_text) {
                message = PyBytes_FromStringAndSize(NULL, n);
                if (message == NULL) {
                    goto error;
                }
                if (masked) {
                    xor_mask(payload, (unsigned char *)PyBytes_AS_STRING(message), n, mask);
                }
                else {
                    memcpy(PyBytes_AS_STRING(message), payload, n);
                }
            }
            else {
                const unsigned char *text = payload;
                unsigned char *scratch = NULL;
                if (masked) {
                    if (n <= STACK_TEXT) {
                        scratch = stack;
                    }
                    else {
                        scratch = PyMem_Malloc(n);
                        if (scratch == NULL) {
                            PyErr_NoMemory();
                            goto error;
                        }
                    }
                    xor_mask(payload, scratch, n, mask);
                    text = scratch;
                }
                message = PyUnicode_DecodeUTF8((const char *)text, n, NULL);
                if (scratch != NULL && scratch != stack) {
                    PyMem_Free(scratch);
                }
                if (message == NULL) {
                    if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                        PyErr_Clear();
                        break; /* the general path reports it */
                    }
                    goto error;
                }
            }
            event = new_event(is_text ? text_type : binary_type, message);
            if (event == NULL) {
                goto error;
            }
            if (PyList_Append(events, event) < 0) {
                Py_DECREF(event);
                goto error;
            }
            Py_DECREF(event);
            pos += header + n;
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(pos);

error:
    PyBuffer_Release(&view);
    return NULL;
}

/* The first byte and length bytes of an unmasked frame, then the payload: one bytes object. */
static PyObject *
frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    long first;
    Py_ssize_t n, header;
    PyObject *result;
    unsigned char *out;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "frame() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    first = PyLong_AsLong(args[0]);
    if (first == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (first < 0 || first > 255) {
        PyErr_SetString(PyExc_ValueError, "first byte out of range");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    n = data.len;
    header = n < 126 ? 2 : n < 0x10000 ? 4 : 10;
    result = PyBytes_FromStringAndSize(NULL, header + n);
    if (result == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    out = (unsigned char *)PyBytes_AS_STRING(result);
    out[0] = (unsigned char)first;
    if (n < 126) {
        out[1] = (unsigned char)n;
    }
    else if (n < 0x10000) {
        out[1] = 126;
        out[2] = (unsigned char)(n >> 8);
        out[3] = (unsigned char)n;
    }
    else {
        int i;
        uint64_t len = (uint64_t)n;
        out[1] = 127;
        for (i = 0; i < 8; i++) {
            out[9 - i] = (unsigned char)(len >> (8 * i));
        }
    }
    memcpy(out + header, data.buf, n);
    PyBuffer_Release(&data);
    return result;
}

/* In-place unmasking of part of a payload being received: XOR buf[start:end] with the mask,
 * at the mask phase of payload offset start (RFC 6455 section 5.3: byte i uses mask[i % 4]). */
static PyObject *
mask_inplace(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer buf, mask;
    Py_ssize_t start, end;
    unsigned char rotated[4];
    int i;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "mask_inplace() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &mask, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    if (mask.len != 4) {
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "mask must contain 4 bytes");
        return NULL;
    }
    for (i = 0; i < 4; i++) {
        rotated[i] = ((const unsigned char *)mask.buf)[(start + i) & 3];
    }
    PyBuffer_Release(&mask);
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_WRITABLE) != 0) {
        return NULL;
    }
    if (start < 0 || end < start || end > buf.len) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "start and end must satisfy 0 <= start <= end <= len(buf)");
        return NULL;
    }
    xor_mask((unsigned char *)buf.buf + start, (unsigned char *)buf.buf + start, end - start,
             rotated);
    PyBuffer_Release(&buf);
    Py_RETURN_NONE;
}

/* Payload: a bytes object of a known size filled in place, then taken whole.
 *
 * A large frame's payload is read straight into the bytes object that becomes the message: no
 * join, no copy. The object exports a writable buffer over the bytes' storage while nobody
 * else can see them. take_payload() hands the bytes out and refuses every later export. A view
 * made before (the event loop's own, while it calls buffer_updated()) stays valid: the payload
 * keeps its reference to the bytes until the last view is released, so no view can outlive the
 * memory. Memory is not touched before the data arrives (a frame header that announces a large
 * payload costs address space, not resident memory). */
typedef struct {
    PyObject_HEAD
    PyObject *data; /* the bytes being filled; NULL once taken and no longer exported */
    Py_ssize_t exports;
    int taken;
} PayloadObject;

static int
payload_getbuffer(PayloadObject *self, Py_buffer *view, int flags)
{
    if (self->taken) {
        view->obj = NULL;
        PyErr_SetString(PyExc_BufferError, "the payload was already taken");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, PyBytes_AS_STRING(self->data),
                          PyBytes_GET_SIZE(self->data), 0, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void
payload_releasebuffer(PayloadObject *self, Py_buffer *view)
{
    if (--self->exports == 0 && self->taken) {
        Py_CLEAR(self->data);
    }
}

static void
payload_dealloc(PayloadObject *self)
{
    Py_XDECREF(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
payload_length(PayloadObject *self)
{
    return self->taken ? 0 : PyBytes_GET_SIZE(self->data);
}

static PyBufferProcs payload_as_buffer = {
    (getbufferproc)payload_getbuffer,
    (releasebufferproc)payload_releasebuffer,
};

static PySequenceMethods payload_as_sequence = {
    (lenfunc)payload_length,
};

static PyTypeObject PayloadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether.accel._speedups.Payload",
    .tp_basicsize = sizeof(PayloadObject),
    .tp_dealloc = (destructor)payload_dealloc,
    .tp_as_sequence = &payload_as_sequence,
    .tp_as_buffer = &payload_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A payload being received in place; see new_payload() and take_payload().",
};

static PyObject *
new_payload(PyObject *self, PyObject *arg)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    PayloadObject *payload;

    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must not be negative");
        return NULL;
    }
    payload = PyObject_New(PayloadObject, &PayloadType);
    if (payload == NULL) {
        return NULL;
    }
    payload->exports = 0;
    payload->taken = 0;
    payload->data = PyBytes_FromStringAndSize(NULL, size);
    if (payload->data == NULL) {
        Py_DECREF(payload);
        return NULL;
    }
    return (PyObject *)payload;
}

static PyObject *
take_payload(PyObject *self, PyObject *arg)
{
    PayloadObject *payload = (PayloadObject *)arg;
    PyObject *data;

    if (!Py_IS_TYPE(arg, &PayloadType)) {
        PyErr_Format(PyExc_TypeError, "take_payload() needs a payload from new_payload(), not %s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    if (payload->taken) {
        PyErr_SetString(PyExc_BufferError, "the payload was already taken");
        return NULL;
    }
    payload->taken = 1;
    data = payload->data;
    Py_INCREF(data);
    if (payload->exports == 0) {
        Py_CLEAR(payload->data);
    }
    return data;
}

/* ---- parse_upgrade_head: the opening handshake's common case -------------------------------- */

/* RFC 9110 section 5.6.2 tchar. */
static const unsigned char TCHAR[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
};

/* A str of n ASCII bytes (the caller checked they are ASCII), lowercased if lower. */
static PyObject *
ascii_str(const unsigned char *s, Py_ssize_t n, int lower)
{
    PyObject *str = PyUnicode_New(n, 127);
    Py_UCS1 *out;
    Py_ssize_t i;

    if (str == NULL) {
        return NULL;
    }
    out = PyUnicode_1BYTE_DATA(str);
    if (lower) {
        for (i = 0; i < n; i++) {
            out[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (Py_UCS1)(s[i] + 32) : s[i];
        }
    } else {
        memcpy(out, s, (size_t)n);
    }
    return str;
}

/* Whether the n bytes at s equal the lowercase ASCII word, ignoring case. */
static int
equals_lower(const unsigned char *s, Py_ssize_t n, const char *word)
{
    Py_ssize_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c += 32;
        }
        if (word[i] == '\0' || c != (unsigned char)word[i]) {
            return 0;
        }
    }
    return word[n] == '\0';
}

/* Whether a Connection value holds the token "upgrade" among its comma-separated ones. */
static int
has_upgrade_token(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t start = 0, end, a, b;

    while (start <= n) {
        end = start;
        while (end < n && s[end] != ',') {
            end++;
        }
        a = start;
        b = end;
        while (a < b && s[a] == ' ') {
            a++;
        }
        while (b > a && s[b - 1] == ' ') {
            b--;
        }
        if (equals_lower(s + a, b - a, "upgrade")) {
            return 1;
        }
        start = end + 1;
    }
    return 0;
}

static PyObject *
parse_upgrade_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t max_line, max_headers, limit, len, end = -1, i, nlines = 1, pos, eol, sp;
    const unsigned char *buf;
    PyObject *copy, *target = NULL, *items = NULL, *index = NULL, *result = NULL;
    int has_upgrade = 0, has_connection_upgrade = 0;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "parse_upgrade_head() takes 4 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    max_line = PyLong_AsSsize_t(args[1]);
    if (max_line == -1 && PyErr_Occurred()) {
        return NULL;
    }
    max_headers = PyLong_AsSsize_t(args[2]);
    if (max_headers == -1 && PyErr_Occurred()) {
        return NULL;
    }
    limit = PyLong_AsSsize_t(args[3]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (get_contiguous(args[0], &view, &copy) != 0) {
        return NULL;
    }
    buf = (const unsigned char *)view.buf;
    len = view.len;

    /* The blank line, wholly within the first `limit` bytes (bytes.find's end argument). */
    if (limit < 0) {
        limit = limit + len < 0 ? 0 : limit + len;
    }
    if (limit > len) {
        limit = len;
    }
    for (i = 0; i + 4 <= limit; i++) {
        const unsigned char *cr = memchr(buf + i, '\r', (size_t)(limit - 3 - i));
        if (cr == NULL) {
            break;
        }
        i = cr - buf;
        if (buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') {
            end = i;
            break;
        }
    }
    if (end < 0) {
        goto none;
    }
    /* Printable ASCII lines separated by CRLF: a lone CR or LF, a control character (HTAB
       too) or a byte outside ASCII sends the request to the full parser. */
    for (i = 0; i < end; i++) {
        unsigned char c = buf[i];
        if (c == '\r' && i + 1 < end && buf[i + 1] == '\n') {
            nlines++;
            i++;
        } else if (c < 0x20 || c > 0x7E) {
            goto none;
        }
    }
    if (nlines > max_headers + 1) {
        goto none;
    }
    /* "GET " target " HTTP/1.1", the target starting with "/" and holding no space. */
    eol = 0;
    while (eol < end && !(buf[eol] == '\r' && buf[eol + 1] == '\n')) {
        eol++;
    }
    if (eol < 4 || memcmp(buf, "GET ", 4) != 0) {
        goto none;
    }
    sp = 4;
    while (sp < eol && buf[sp] != ' ') {
        sp++;
    }
    if (sp == 4 || buf[4] != '/' || sp - 4 > max_line || eol - sp != 9 ||
        memcmp(buf + sp, " HTTP/1.1", 9) != 0) {
        goto none;
    }
    target = ascii_str(buf + 4, sp - 4, 0);
    items = PyList_New(0);
    index = PyDict_New();
    if (target == NULL || items == NULL || index == NULL) {
        goto error;
    }
    /* The fields: "name:value", the name of tchar, spaces around the value stripped. */
    pos = eol + 2;
    while (pos < end + 2 && eol < end) {
        Py_ssize_t colon, a, b;
        PyObject *name, *value, *key, *pair, *values;
        int rc;

        eol = pos;
        while (eol < end && !(buf[eol] == '\r' && buf[eol + 1] == '\n')) {
            eol++;
        }
        colon = pos;
        while (colon < eol && buf[colon] != ':') {
            if (!TCHAR[buf[colon]]) {
                goto none;
            }
            colon++;
        }
        if (colon == eol || colon == pos) {
            goto none; /* no colon, or an empty name */
        }
        a = colon + 1;
        b = eol;
        while (a < b && buf[a] == ' ') {
            a++;
        }
        while (b > a && buf[b - 1] == ' ') {
            b--;
        }
        if (equals_lower(buf + pos, colon - pos, "upgrade")) {
            if (a == b) {
                goto none; /* an empty Upgrade */
            }
            has_upgrade = 1;
        } else if (equals_lower(buf + pos, colon - pos, "connection")) {
            has_connection_upgrade = has_connection_upgrade || has_upgrade_token(buf + a, b - a);
        } else if (equals_lower(buf + pos, colon - pos, "content-length") ||
                   equals_lower(buf + pos, colon - pos, "transfer-encoding") ||
                   equals_lower(buf + pos, colon - pos, "proxy-connection")) {
            goto none; /* a body, or framing that llhttp handles */
        }
        name = ascii_str(buf + pos, colon - pos, 0);
        value = ascii_str(buf + a, b - a, 0);
        key = ascii_str(buf + pos, colon - pos, 1);
        pair = (name != NULL && value != NULL) ? PyTuple_Pack(2, name, value) : NULL;
        Py_XDECREF(name);
        if (pair == NULL || key == NULL) {
            Py_XDECREF(value);
            Py_XDECREF(key);
            Py_XDECREF(pair);
            goto error;
        }
        rc = PyList_Append(items, pair);
        Py_DECREF(pair);
        values = rc == 0 ? PyDict_GetItemWithError(index, key) : NULL;
        if (rc != 0 || (values == NULL && PyErr_Occurred())) {
            rc = -1;
        } else if (values != NULL) {
            rc = PyList_Append(values, value);
        } else {
            values = PyList_New(1);
            if (values == NULL) {
                rc = -1;
            } else {
                Py_INCREF(value);
                PyList_SET_ITEM(values, 0, value);
                rc = PyDict_SetItem(index, key, values);
                Py_DECREF(values);
            }
        }
        Py_DECREF(value);
        Py_DECREF(key);
        if (rc != 0) {
            goto error;
        }
        pos = eol + 2;
    }
    if (!has_upgrade || !has_connection_upgrade) {
        goto none;
    }
    result = Py_BuildValue("(OOOn)", target, items, index, end + 4);
    goto error; /* the cleanup is the same */

none:
    result = Py_None;
    Py_INCREF(result);
error:
    Py_XDECREF(target);
    Py_XDECREF(items);
    Py_XDECREF(index);
    PyBuffer_Release(&view);
    Py_XDECREF(copy);
    return result;
}

/* pack_fields(fields): see _python.py. Names and values of one byte per character (ASCII and
 * Latin-1: every parsed field) are copied straight into the result; anything wider goes
 * through PyUnicode_Join. */
static PyObject *
pack_fields(PyObject *self, PyObject *fields)
{
    Py_ssize_t n, i, total = 0;
    Py_UCS4 maxchar = 127;
    int narrow = 1;
    PyObject *result, *parts, *colon, *newline, *empty;

    if (!PyList_Check(fields)) {
        PyErr_Format(PyExc_TypeError, "fields must be a list, not %.100s",
                     Py_TYPE(fields)->tp_name);
        return NULL;
    }
    n = PyList_GET_SIZE(fields);
    for (i = 0; i < n; i++) {
        PyObject *field = PyList_GET_ITEM(fields, i), *name, *value;
        if (!PyTuple_Check(field) || PyTuple_GET_SIZE(field) != 2) {
            PyErr_SetString(PyExc_TypeError, "a field must be a (name, value) tuple");
            return NULL;
        }
        name = PyTuple_GET_ITEM(field, 0);
        value = PyTuple_GET_ITEM(field, 1);
        if (!PyUnicode_Check(name) || !PyUnicode_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "a field's name and value must be str");
            return NULL;
        }
        if (PyUnicode_READY(name) < 0 || PyUnicode_READY(value) < 0) {
            return NULL;
        }
        if (PyUnicode_FindChar(name, ':', 0, PyUnicode_GET_LENGTH(name), 1) != -1 ||
            PyUnicode_FindChar(name, '\n', 0, PyUnicode_GET_LENGTH(name), 1) != -1 ||
            PyUnicode_FindChar(value, '\n', 0, PyUnicode_GET_LENGTH(value), 1) != -1) {
            Py_RETURN_NONE; /* would not unpack to the same fields */
        }
        if (PyUnicode_KIND(name) != PyUnicode_1BYTE_KIND ||
            PyUnicode_KIND(value) != PyUnicode_1BYTE_KIND) {
            narrow = 0;
        }
        else {
            if (PyUnicode_MAX_CHAR_VALUE(name) > maxchar) {
                maxchar = PyUnicode_MAX_CHAR_VALUE(name);
            }
            if (PyUnicode_MAX_CHAR_VALUE(value) > maxchar) {
                maxchar = PyUnicode_MAX_CHAR_VALUE(value);
            }
        }
        total += PyUnicode_GET_LENGTH(name) + 1 + PyUnicode_GET_LENGTH(value) + (i > 0);
    }
    if (narrow) {
        Py_UCS1 *out;
        result = PyUnicode_New(total, maxchar);
        if (result == NULL) {
            return NULL;
        }
        out = PyUnicode_1BYTE_DATA(result);
        for (i = 0; i < n; i++) {
            PyObject *field = PyList_GET_ITEM(fields, i);
            PyObject *name = PyTuple_GET_ITEM(field, 0), *value = PyTuple_GET_ITEM(field, 1);
            Py_ssize_t ln = PyUnicode_GET_LENGTH(name), lv = PyUnicode_GET_LENGTH(value);
            if (i > 0) {
                *out++ = '\n';
            }
            memcpy(out, PyUnicode_1BYTE_DATA(name), ln);
            out += ln;
            *out++ = ':';
            memcpy(out, PyUnicode_1BYTE_DATA(value), lv);
            out += lv;
        }
        return result;
    }
    /* Some character wider than a byte: name, ":", value, "\n", ... joined. */
    parts = PyList_New(n > 0 ? 4 * n - 1 : 0);
    colon = PyUnicode_FromOrdinal(':');
    newline = PyUnicode_FromOrdinal('\n');
    if (parts == NULL || colon == NULL || newline == NULL) {
        Py_XDECREF(parts);
        Py_XDECREF(colon);
        Py_XDECREF(newline);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *field = PyList_GET_ITEM(fields, i);
        PyObject *name = PyTuple_GET_ITEM(field, 0), *value = PyTuple_GET_ITEM(field, 1);
        if (i > 0) {
            Py_INCREF(newline);
            PyList_SET_ITEM(parts, 4 * i - 1, newline);
        }
        Py_INCREF(name);
        PyList_SET_ITEM(parts, 4 * i, name);
        Py_INCREF(colon);
        PyList_SET_ITEM(parts, 4 * i + 1, colon);
        Py_INCREF(value);
        PyList_SET_ITEM(parts, 4 * i + 2, value);
    }
    empty = PyUnicode_New(0, 0);
    result = empty == NULL ? NULL : PyUnicode_Join(empty, parts);
    Py_XDECREF(empty);
    Py_DECREF(parts);
    Py_DECREF(colon);
    Py_DECREF(newline);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, mask) -> bytes\n\nXOR data with the 4-byte mask repeated "
     "(RFC 6455 section 5.3)."},
    {"parse_messages", (PyCFunction)(void (*)(void))parse_messages, METH_FASTCALL,
     "parse_messages(buf, pos, masked, limit, events, text_type, binary_type) -> int\n\n"
     "Parse whole messages in single plain frames; see tether/accel/_python.py."},
    {"frame", (PyCFunction)(void (*)(void))frame, METH_FASTCALL,
     "frame(first_byte, payload) -> bytes\n\nAn unmasked frame: header and payload."},
    {"mask_inplace", (PyCFunction)(void (*)(void))mask_inplace, METH_FASTCALL,
     "mask_inplace(buf, start, end, mask) -> None\n\nUnmask buf[start:end] in place, at the "
     "mask phase of offset start."},
    {"new_payload", (PyCFunction)new_payload, METH_O,
     "new_payload(size) -> Payload\n\nA writable buffer of size bytes that becomes bytes."},
    {"take_payload", (PyCFunction)take_payload, METH_O,
     "take_payload(payload) -> bytes\n\nThe filled payload as bytes, once no view is left."},
    {"parse_upgrade_head", (PyCFunction)(void (*)(void))parse_upgrade_head, METH_FASTCALL,
     "parse_upgrade_head(data, max_request_line, max_headers, max_header_bytes) -> tuple | None"
     "\n\nA whole, plain WebSocket upgrade request: (target, fields, index, end), or None."},
    {"pack_fields", (PyCFunction)pack_fields, METH_O,
     "pack_fields(fields) -> str | None\n\nHeader fields as \"name:value\" lines in one string, "
     "or None when that would not unpack to the same fields."},
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
#ifdef TETHER_AVX2
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
    if (PyType_Ready(&PayloadType) < 0) {
        return NULL;
    }
    return PyModule_Create(&speedups_module);
}
