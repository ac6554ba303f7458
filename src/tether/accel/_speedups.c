/* tether.accel._speedups: compiled versions of tether/accel/_python.py.
 *
 * _python.py is the specification: same names, signatures, accepted types and exceptions.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h> /* T_OBJECT_EX, Py_T_OBJECT_EX since 3.12 */
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif
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

/* Whether buf[pos:end] starts with a whole message in one plain frame: FIN set, RSV clear,
 * text or binary, the mask bit equal to masked, the length in its minimal encoding and at
 * most limit (-1: no limit), the whole frame present. If so, sets *header (the header's
 * size, mask included) and *length (the payload's). UTF-8 is checked later, by
 * frame_message. */
static int
plain_frame(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end, int masked,
            Py_ssize_t limit, Py_ssize_t *header, Py_ssize_t *length)
{
    unsigned char b0, b1;
    uint64_t n;
    Py_ssize_t h = 2;

    if (end - pos < 2) {
        return 0;
    }
    b0 = buf[pos];
    b1 = buf[pos + 1];
    if ((b0 != 0x81 && b0 != 0x82) || (b1 & 0x80) != (masked ? 0x80 : 0)) {
        return 0;
    }
    n = b1 & 0x7F;
    if (n == 126) {
        if (end - pos < 4) {
            return 0;
        }
        n = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
        if (n < 126) {
            return 0;
        }
        h = 4;
    }
    else if (n == 127) {
        int i;
        if (end - pos < 10) {
            return 0;
        }
        n = 0;
        for (i = 0; i < 8; i++) {
            n = (n << 8) | buf[pos + 2 + i];
        }
        if ((n >> 63) || n < 0x10000) {
            return 0;
        }
        h = 10;
    }
    if (limit >= 0 && n > (uint64_t)limit) {
        return 0;
    }
    if (masked) {
        h += 4;
    }
    if (end - pos < h || (uint64_t)(end - pos - h) < n) {
        return 0; /* incomplete */
    }
    *header = h;
    *length = (Py_ssize_t)n;
    return 1;
}

/* The message of the plain frame at frame (see plain_frame): str for text, bytes for binary,
 * unmasked. NULL with an exception set on failure, or NULL without one when a text payload is
 * not valid UTF-8 (the general parser reports that). */
static PyObject *
frame_message(const unsigned char *frame, Py_ssize_t header, Py_ssize_t n, int masked)
{
    const unsigned char *payload = frame + header;
    const unsigned char *mask = masked ? payload - 4 : NULL;
    const unsigned char *text = payload;
    unsigned char stack[STACK_TEXT];
    unsigned char *scratch = NULL;
    PyObject *message;

    if (frame[0] == 0x82) {
        message = PyBytes_FromStringAndSize(NULL, n);
        if (message != NULL) {
            if (masked) {
                xor_mask(payload, (unsigned char *)PyBytes_AS_STRING(message), n, mask);
            }
            else {
                memcpy(PyBytes_AS_STRING(message), payload, n);
            }
        }
        return message;
    }
    if (masked) {
        scratch = n <= STACK_TEXT ? stack : PyMem_Malloc(n);
        if (scratch == NULL) {
            return PyErr_NoMemory();
        }
        xor_mask(payload, scratch, n, mask);
        text = scratch;
    }
    message = PyUnicode_DecodeUTF8((const char *)text, n, NULL);
    if (scratch != NULL && scratch != stack) {
        PyMem_Free(scratch);
    }
    if (message == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
    }
    return message;
}

static PyObject *
parse_messages(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t pos, end, limit, header, n;
    int masked;
    PyObject *events;
    PyTypeObject *text_type, *binary_type;

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
        while (plain_frame(buf, pos, end, masked, limit, &header, &n)) {
            PyObject *message = frame_message(buf + pos, header, n, masked), *event;
            if (message == NULL) {
                if (PyErr_Occurred()) {
                    goto error;
                }
                break; /* not UTF-8: the general path reports it */
            }
            event = new_event(buf[pos] == 0x81 ? text_type : binary_type, message);
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

/* The frame of first byte `first` with n bytes of payload: header and payload, unmasked. */
static PyObject *
build_frame(unsigned char first, const void *payload, Py_ssize_t n)
{
    Py_ssize_t header = n < 126 ? 2 : n < 0x10000 ? 4 : 10;
    PyObject *result = PyBytes_FromStringAndSize(NULL, header + n);
    unsigned char *out;

    if (result == NULL) {
        return NULL;
    }
    out = (unsigned char *)PyBytes_AS_STRING(result);
    out[0] = first;
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
    memcpy(out + header, payload, n);
    return result;
}

/* The first byte and length bytes of an unmasked frame, then the payload: one bytes object. */
static PyObject *
frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    long first;
    PyObject *result;

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
    result = build_frame((unsigned char)first, data.buf, data.len);
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

/* ---- Waiter: recv()'s Future, which a fused read can resume at once --------------------------
 *
 * What a waiting recv() awaits: an asyncio Future as far as anyone can tell (a Task awaits it
 * through the protocol of "Future-compatible" objects: _asyncio_future_blocking,
 * add_done_callback, result, cancel; set_result and cancel schedule the callbacks with the
 * loop's call_soon, as asyncio.Future does). Its specification is asyncio.Future, which the
 * pure-Python build uses in its place.
 *
 * The one thing more: waiter_resume(), which only the fused data_received calls. It sets the
 * result and runs the callbacks (the waiting Task's wake-up) at once, each in its context,
 * where set_result would queue them for the loop: the handler's step runs inside the read,
 * before its next message is looked at, and costs no Future, no Handle and no loop turn. The
 * fused read calls it only when no Task is running on the loop (the step enters its own). */

enum { WAITER_PENDING, WAITER_FINISHED, WAITER_CANCELLED };

typedef struct {
    PyObject_HEAD
    PyObject *loop;
    PyObject *result;    /* once finished */
    PyObject *exception; /* once finished with one */
    PyObject *cancel_msg;
    PyObject *callback, *context; /* the first callback (a Task's wake-up), kept apart */
    PyObject *callbacks;          /* a list of (callback, context) for any more */
    char state;
    char blocking;  /* _asyncio_future_blocking */
    char yielded;
} WaiterObject;

static PyTypeObject WaiterType;
static PyObject *str_call_soon_w, *context_kwnames;

static int
waiter_traverse(WaiterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->loop);
    Py_VISIT(self->result);
    Py_VISIT(self->exception);
    Py_VISIT(self->cancel_msg);
    Py_VISIT(self->callback);
    Py_VISIT(self->context);
    Py_VISIT(self->callbacks);
    return 0;
}

static int
waiter_clear(WaiterObject *self)
{
    Py_CLEAR(self->loop);
    Py_CLEAR(self->result);
    Py_CLEAR(self->exception);
    Py_CLEAR(self->cancel_msg);
    Py_CLEAR(self->callback);
    Py_CLEAR(self->context);
    Py_CLEAR(self->callbacks);
    return 0;
}

static void
waiter_dealloc(WaiterObject *self)
{
    PyObject_GC_UnTrack(self);
    waiter_clear(self);
    PyObject_GC_Del(self);
}

/* Waiter(loop=loop), as asyncio.Future(loop=loop) is called (loop also positional). */
static PyObject *
waiter_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *loop;
    WaiterObject *self;
    if (nargs == 1 && kwnames == NULL) {
        loop = args[0];
    }
    else if (nargs == 0 && kwnames != NULL && PyTuple_GET_SIZE(kwnames) == 1 &&
             PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) &&
             PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "loop") == 0) {
        loop = args[0];
    }
    else {
        PyErr_SetString(PyExc_TypeError, "Waiter() takes one argument: loop");
        return NULL;
    }
    self = PyObject_GC_New(WaiterObject, &WaiterType);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(loop);
    self->loop = loop;
    self->result = self->exception = self->cancel_msg = NULL;
    self->callback = self->context = self->callbacks = NULL;
    self->state = WAITER_PENDING;
    self->blocking = 0;
    self->yielded = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *
waiter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"loop", NULL};
    PyObject *loop;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Waiter", names, &loop)) {
        return NULL;
    }
    return waiter_vectorcall((PyObject *)type, &loop, 1, NULL);
}

static PyObject *
asyncio_error(const char *name)
{
    PyObject *module = PyImport_ImportModule("asyncio.exceptions"), *error;
    if (module == NULL) {
        return NULL;
    }
    error = PyObject_GetAttrString(module, name);
    Py_DECREF(module);
    return error;
}

/* Raise asyncio's `name` (CancelledError, InvalidStateError) with arg (NULL: none). */
static PyObject *
raise_asyncio(const char *name, PyObject *arg)
{
    PyObject *error = asyncio_error(name), *exc;
    if (error == NULL) {
        return NULL;
    }
    exc = arg == NULL ? PyObject_CallNoArgs(error) : PyObject_CallOneArg(error, arg);
    if (exc != NULL) {
        PyErr_SetObject(error, exc);
        Py_DECREF(exc);
    }
    Py_DECREF(error);
    return NULL;
}

static PyObject *
raise_cancelled(WaiterObject *self)
{
    return raise_asyncio("CancelledError", self->cancel_msg);
}

/* loop.call_soon(callback, self, context=context) */
static int
schedule(WaiterObject *self, PyObject *callback, PyObject *context)
{
    if (self->loop == NULL) { /* (cleared by the collector) */
        PyErr_SetString(PyExc_RuntimeError, "the Waiter has no loop");
        return -1;
    }
    PyObject *stack[4] = {self->loop, callback, (PyObject *)self, context};
    PyObject *result = PyObject_VectorcallMethod(
        str_call_soon_w, stack, 3,
        context != NULL && context != Py_None ? context_kwnames : NULL);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* Take the callbacks off self: a new list of (callback, context) pairs. */
static PyObject *
take_callbacks(WaiterObject *self)
{
    PyObject *all = self->callbacks, *pair;
    self->callbacks = NULL;
    if (self->callback == NULL) {
        return all != NULL ? all : PyList_New(0);
    }
    pair = PyTuple_Pack(2, self->callback, self->context != NULL ? self->context : Py_None);
    Py_CLEAR(self->callback);
    Py_CLEAR(self->context);
    if (all == NULL) {
        all = PyList_New(0);
    }
    if (pair == NULL || all == NULL || PyList_Insert(all, 0, pair) < 0) {
        Py_XDECREF(pair);
        Py_XDECREF(all);
        return NULL;
    }
    Py_DECREF(pair);
    return all;
}

/* As asyncio.Future's __schedule_callbacks. */
static int
schedule_callbacks(WaiterObject *self)
{
    PyObject *all = take_callbacks(self);
    Py_ssize_t i;
    if (all == NULL) {
        return -1;
    }
    for (i = 0; i < PyList_GET_SIZE(all); i++) {
        PyObject *pair = PyList_GET_ITEM(all, i);
        if (schedule(self, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) {
            Py_DECREF(all);
            return -1;
        }
    }
    Py_DECREF(all);
    return 0;
}

/* What a Task's wake-up is given in place of the Waiter: asyncio's own Future, done, with no
 * exception. The wake-up only asks its argument whether it failed (its result goes unused:
 * the step resumes the coroutine, whose `await` takes the Waiter's), and asks asyncio's
 * Future without a call of its result() method. Its "loop" is a namespace whose get_debug()
 * is bool() (all a Future asks of its loop before it has callbacks): it keeps no loop alive.
 * NULL when it cannot be made. */
static PyObject *
done_future(void)
{
    static PyObject *future;
    if (future == NULL) {
        PyObject *module = PyImport_ImportModule("_asyncio"), *type, *made, *result, *loop;
        if (module == NULL) {
            PyErr_Clear();
            return NULL;
        }
        type = PyObject_GetAttrString(module, "Future");
        Py_DECREF(module);
        module = PyImport_ImportModule("types");
        loop = module == NULL ? NULL
                              : PyObject_CallMethod(module, "SimpleNamespace", NULL);
        Py_XDECREF(module);
        if (type == NULL || loop == NULL ||
            PyObject_SetAttrString(loop, "get_debug", (PyObject *)&PyBool_Type) < 0) {
            PyErr_Clear();
            Py_XDECREF(type);
            Py_XDECREF(loop);
            return NULL;
        }
        {
            PyObject *stack[1] = {loop}, *kwnames = Py_BuildValue("(s)", "loop");
            made = kwnames == NULL ? NULL : PyObject_Vectorcall(type, stack, 0, kwnames);
            Py_XDECREF(kwnames);
        }
        Py_DECREF(loop);
        Py_DECREF(type);
        if (made == NULL) {
            PyErr_Clear();
            return NULL;
        }
        result = PyObject_CallMethod(made, "set_result", "O", Py_None);
        if (result == NULL) {
            PyErr_Clear();
            Py_DECREF(made);
            return NULL;
        }
        Py_DECREF(result);
        future = made;
    }
    return future;
}

/* Whether callback is the wake-up of asyncio's compiled Task (a builtin bound to the Task). */
static int
is_task_wakeup(PyObject *callback)
{
    return PyCFunction_Check(callback) &&
           strcmp(((PyCFunctionObject *)callback)->m_ml->ml_name, "task_wakeup") == 0;
}

/* The fused read's set_result: the callbacks run now, each in its context (see above). A
 * callback that fails is reported as unraisable (a Task's wake-up does not fail: the Task
 * keeps its coroutine's exceptions), but for KeyboardInterrupt and SystemExit, which go on up
 * as they would from the loop's Handle: -1 with the exception set. -1 also when the Waiter was
 * done (nothing run then). */
static int
waiter_resume(WaiterObject *self, PyObject *value)
{
    PyObject *callback = self->callback, *context = self->context, *rest = self->callbacks;
    PyObject *exit_type = NULL, *exit_value = NULL, *exit_tb = NULL;
    Py_ssize_t i;
    if (self->state != WAITER_PENDING) {
        PyErr_SetString(PyExc_RuntimeError, "the waiter is done");
        return -1;
    }
    Py_INCREF(value);
    self->result = value;
    self->state = WAITER_FINISHED;
    self->callback = self->context = self->callbacks = NULL;
    if (callback != NULL) {
        PyObject *result;
        int entered = context != NULL && context != Py_None;
        if (entered && PyContext_Enter(context) < 0) {
            /* (entered already: only a strange caller's doing) queued, as set_result does */
            PyErr_Clear();
            entered = 0;
            if (schedule(self, callback, context) < 0) {
                PyErr_WriteUnraisable(callback);
            }
        }
        else {
            PyObject *argument = is_task_wakeup(callback) ? done_future() : NULL;
            result = PyObject_CallOneArg(callback,
                                         argument != NULL ? argument : (PyObject *)self);
            if (result == NULL) {
                if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) ||
                    PyErr_ExceptionMatches(PyExc_SystemExit)) {
                    PyErr_Fetch(&exit_type, &exit_value, &exit_tb);
                }
                else {
                    PyErr_WriteUnraisable(callback);
                }
            }
            Py_XDECREF(result);
            if (entered && PyContext_Exit(context) < 0) {
                PyErr_WriteUnraisable(context);
            }
        }
        Py_DECREF(callback);
        Py_XDECREF(context);
    }
    if (rest != NULL) {
        for (i = 0; i < PyList_GET_SIZE(rest); i++) { /* more than one: queued, in order */
            PyObject *pair = PyList_GET_ITEM(rest, i);
            if (schedule(self, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1)) < 0) {
                PyErr_WriteUnraisable(PyTuple_GET_ITEM(pair, 0));
            }
        }
        Py_DECREF(rest);
    }
    if (exit_type != NULL) {
        PyErr_Restore(exit_type, exit_value, exit_tb);
        return -1;
    }
    return 0;
}

static PyObject *
waiter_done(WaiterObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->state != WAITER_PENDING);
}

static PyObject *
waiter_cancelled(WaiterObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->state == WAITER_CANCELLED);
}

/* asyncio's InvalidStateError(text) raised; NULL. */
static PyObject *
raise_invalid_state(PyObject *text)
{
    if (text != NULL) {
        raise_asyncio("InvalidStateError", text);
        Py_DECREF(text);
    }
    return NULL;
}

/* Whether the Waiter has no outcome to give (cancelled, or pending: `pending` says so), with
 * the exception a Future raises then. */
static int
no_outcome(WaiterObject *self, const char *pending)
{
    if (self->state == WAITER_CANCELLED) {
        raise_cancelled(self);
        return 1;
    }
    if (self->state == WAITER_PENDING) {
        raise_invalid_state(PyUnicode_FromString(pending));
        return 1;
    }
    return 0;
}

static PyObject *
waiter_result(WaiterObject *self, PyObject *unused)
{
    if (no_outcome(self, "Result is not ready.")) {
        return NULL;
    }
    if (self->exception != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(self->exception), self->exception);
        return NULL;
    }
    Py_INCREF(self->result);
    return self->result;
}

static PyObject *
waiter_exception(WaiterObject *self, PyObject *unused)
{
    if (no_outcome(self, "Exception is not set.")) {
        return NULL;
    }
    if (self->exception != NULL) {
        Py_INCREF(self->exception);
        return self->exception;
    }
    Py_RETURN_NONE;
}

static PyObject *
invalid_state(WaiterObject *self)
{
    const char *names[] = {"PENDING", "FINISHED", "CANCELLED"};
    return raise_invalid_state(PyUnicode_FromFormat("invalid state: %s", names[(int)self->state]));
}

static PyObject *
waiter_set_result(WaiterObject *self, PyObject *value)
{
    if (self->state != WAITER_PENDING) {
        return invalid_state(self);
    }
    Py_INCREF(value);
    self->result = value;
    self->state = WAITER_FINISHED;
    if (schedule_callbacks(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
waiter_set_exception(WaiterObject *self, PyObject *exception)
{
    PyObject *value;
    if (self->state != WAITER_PENDING) {
        return invalid_state(self);
    }
    if (PyExceptionClass_Check(exception)) {
        value = PyObject_CallNoArgs(exception);
        if (value == NULL) {
            return NULL;
        }
    }
    else if (PyExceptionInstance_Check(exception)) {
        Py_INCREF(exception);
        value = exception;
    }
    else {
        PyErr_SetString(PyExc_TypeError, "invalid exception object");
        return NULL;
    }
    if (PyErr_GivenExceptionMatches(value, PyExc_StopIteration)) {
#if PY_VERSION_HEX >= 0x030D0000
        /* 3.13's Future keeps a RuntimeError caused by it */
        PyObject *error = PyObject_CallFunction(
            PyExc_RuntimeError, "s",
            "StopIteration interacts badly with generators and cannot be raised into a Future");
        if (error == NULL) {
            Py_DECREF(value);
            return NULL;
        }
        PyException_SetCause(error, Py_NewRef(value));
        PyException_SetContext(error, value); /* (the reference moves) */
        value = error;
#else
        Py_DECREF(value);
        PyErr_SetString(PyExc_TypeError,
                        "StopIteration interacts badly with generators and cannot be raised "
                        "into a Future");
        return NULL;
#endif
    }
    self->exception = value;
    self->state = WAITER_FINISHED;
    if (schedule_callbacks(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
waiter_cancel(WaiterObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"msg", NULL};
    PyObject *msg = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:cancel", names, &msg)) {
        return NULL;
    }
    if (self->state != WAITER_PENDING) {
        Py_RETURN_FALSE;
    }
    self->state = WAITER_CANCELLED;
    if (msg != Py_None) {
        Py_INCREF(msg);
        self->cancel_msg = msg;
    }
    if (schedule_callbacks(self) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
waiter_add_done_callback(WaiterObject *self, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames)
{
    PyObject *callback, *context = Py_None, *pair;
    if (nargs != 1 || (kwnames != NULL &&
                       (PyTuple_GET_SIZE(kwnames) != 1 ||
                        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0),
                                                         "context") != 0))) {
        PyErr_SetString(PyExc_TypeError,
                        "add_done_callback() takes a callback and, by keyword, a context");
        return NULL;
    }
    callback = args[0];
    if (kwnames != NULL) {
        context = args[1];
    }
    if (context == Py_None) {
        context = PyContext_CopyCurrent(); /* as asyncio.Future does */
        if (context == NULL) {
            return NULL;
        }
    }
    else {
        Py_INCREF(context);
    }
    if (self->state != WAITER_PENDING) {
        int failed = schedule(self, callback, context) < 0;
        Py_DECREF(context);
        if (failed) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (self->callback == NULL && self->callbacks == NULL) {
        Py_INCREF(callback);
        self->callback = callback;
        self->context = context;
        Py_RETURN_NONE;
    }
    pair = PyTuple_Pack(2, callback, context);
    Py_DECREF(context);
    if (pair == NULL) {
        return NULL;
    }
    if (self->callbacks == NULL && (self->callbacks = PyList_New(0)) == NULL) {
        Py_DECREF(pair);
        return NULL;
    }
    if (PyList_Append(self->callbacks, pair) < 0) {
        Py_DECREF(pair);
        return NULL;
    }
    Py_DECREF(pair);
    Py_RETURN_NONE;
}

static PyObject *
waiter_remove_done_callback(WaiterObject *self, PyObject *callback)
{
    PyObject *all, *kept;
    Py_ssize_t i, removed = 0;
    if (self->state != WAITER_PENDING) {
        return PyLong_FromLong(0);
    }
    all = take_callbacks(self);
    if (all == NULL) {
        return NULL;
    }
    kept = PyList_New(0);
    if (kept == NULL) {
        self->callbacks = all;
        return NULL;
    }
    for (i = 0; i < PyList_GET_SIZE(all); i++) {
        PyObject *pair = PyList_GET_ITEM(all, i);
        int equal = PyObject_RichCompareBool(PyTuple_GET_ITEM(pair, 0), callback, Py_EQ);
        if (equal < 0) {
            Py_DECREF(kept);
            self->callbacks = all;
            return NULL;
        }
        if (equal) {
            removed++;
        }
        else if (PyList_Append(kept, pair) < 0) {
            Py_DECREF(kept);
            self->callbacks = all;
            return NULL;
        }
    }
    Py_DECREF(all);
    if (PyList_GET_SIZE(kept) > 0) {
        self->callbacks = kept;
    }
    else {
        Py_DECREF(kept);
    }
    return PyLong_FromSsize_t(removed);
}

static PyObject *
waiter_get_loop(WaiterObject *self, PyObject *unused)
{
    if (self->loop == NULL) { /* (cleared by the collector) */
        PyErr_SetString(PyExc_RuntimeError, "the Waiter has no loop");
        return NULL;
    }
    Py_INCREF(self->loop);
    return self->loop;
}

/* `await waiter`: itself, until it is done; then its result (asyncio.Future.__await__). */
static PySendResult
waiter_am_send(PyObject *obj, PyObject *arg, PyObject **result)
{
    WaiterObject *self = (WaiterObject *)obj;
    if (self->state == WAITER_PENDING) {
        if (self->yielded) {
            PyErr_SetString(PyExc_RuntimeError, "await wasn't used with future");
            return PYGEN_ERROR;
        }
        self->yielded = 1;
        self->blocking = 1;
        Py_INCREF(obj);
        *result = obj;
        return PYGEN_NEXT;
    }
    *result = waiter_result(self, NULL);
    return *result == NULL ? PYGEN_ERROR : PYGEN_RETURN;
}

/* Raise StopIteration(value) (a reference taken), as a generator returns value; NULL. */
static PyObject *
stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
    }
    else {
        PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
        if (stop != NULL) {
            PyErr_SetObject(PyExc_StopIteration, stop);
            Py_DECREF(stop);
        }
    }
    Py_DECREF(value);
    return NULL;
}

static PyObject *
waiter_iternext(PyObject *obj)
{
    PyObject *result;
    switch (waiter_am_send(obj, Py_None, &result)) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN:
        return stop_iteration(result);
    default:
        return NULL;
    }
}

static PyObject *
waiter_await(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

static PyObject *
waiter_get_blocking(WaiterObject *self, void *closure)
{
    return PyBool_FromLong(self->blocking);
}

static int
waiter_set_blocking(WaiterObject *self, PyObject *value, void *closure)
{
    int truth;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete attribute");
        return -1;
    }
    truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    self->blocking = (char)truth;
    return 0;
}

static PyObject *
waiter_get_loop_attr(WaiterObject *self, void *closure)
{
    return waiter_get_loop(self, NULL);
}

static PyObject *
waiter_repr(WaiterObject *self)
{
    const char *names[] = {"pending", "finished", "cancelled"};
    return PyUnicode_FromFormat("<Waiter %s>", names[(int)self->state]);
}

static PyMethodDef waiter_methods[] = {
    {"done", (PyCFunction)waiter_done, METH_NOARGS, NULL},
    {"cancelled", (PyCFunction)waiter_cancelled, METH_NOARGS, NULL},
    {"result", (PyCFunction)waiter_result, METH_NOARGS, NULL},
    {"exception", (PyCFunction)waiter_exception, METH_NOARGS, NULL},
    {"set_result", (PyCFunction)waiter_set_result, METH_O, NULL},
    {"set_exception", (PyCFunction)waiter_set_exception, METH_O, NULL},
    {"cancel", (PyCFunction)(void (*)(void))waiter_cancel, METH_VARARGS | METH_KEYWORDS, NULL},
    {"add_done_callback", (PyCFunction)(void (*)(void))waiter_add_done_callback,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    {"remove_done_callback", (PyCFunction)waiter_remove_done_callback, METH_O, NULL},
    {"get_loop", (PyCFunction)waiter_get_loop, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef waiter_getset[] = {
    {"_asyncio_future_blocking", (getter)waiter_get_blocking, (setter)waiter_set_blocking, NULL,
     NULL},
    {"_loop", (getter)waiter_get_loop_attr, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyAsyncMethods waiter_async = {
    .am_await = waiter_await,
    .am_send = waiter_am_send,
};

static PyTypeObject WaiterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether.accel._speedups.Waiter",
    .tp_doc = "Waiter(loop)\n--\n\nWhat a waiting recv() awaits: an asyncio.Future (its "
              "specification) that a fused read can resume at once.",
    .tp_basicsize = sizeof(WaiterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = waiter_new,
    .tp_vectorcall = waiter_vectorcall,
    .tp_dealloc = (destructor)waiter_dealloc,
    .tp_traverse = (traverseproc)waiter_traverse,
    .tp_clear = (inquiry)waiter_clear,
    .tp_repr = (reprfunc)waiter_repr,
    .tp_as_async = &waiter_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = waiter_iternext,
    .tp_methods = waiter_methods,
    .tp_getset = waiter_getset,
};

/* ---- The I/O layer's fast paths ------------------------------------------------------------
 *
 * fuse() replaces the methods of tether.asyncio.connection.WebSocket on the path of every
 * message with versions that take their common case in C:
 *
 *   data_received: an open connection with nothing half-received reads one or more whole
 *   messages in plain frames, for a Listener (each to on_message) or for a recv() that waits:
 *   on a Waiter, each message resumes the waiting Task's step at once, inside the read (see
 *   Waiter above); on another Future, that one message is its result;
 *   send_nowait: a server sends a small str or bytes message, uncompressed;
 *   _end_turn and _flush: what was gathered is written;
 *   recv and __anext__: a Coroutine (below) that does _receive's common case.
 *
 * Anything else, and any state they do not expect, goes to the Python method they replace,
 * called with the same arguments before anything changed: those methods are the
 * specification. The C versions do what they do, in the same order, calling the same Python
 * methods for the rare branches (_listener_failed, _write, _flush, _receive_close).
 *
 * The fields of the WebSocket and of its protocol (a tether.protocol Connection) are their
 * __slots__, read and written at the offsets of the member descriptors that fuse() finds. An
 * instance is served only when its class resolves each of those names, and each method whose
 * work the fused code does inline (_process_events, the core's receive_data and
 * frame_message), to what WebSocket and Connection do: a subclass that redefines one gets the
 * Python methods. That is checked once per class, and again after the class (or a base) is
 * changed, as its version tag tells. The methods the fused code calls (_end_turn, _flush,
 * _write, _listener_failed, ...) it calls by name, as the Python methods do, so that a class's
 * or an instance's own is the one called.
 *
 * fuse() serves one class: a second call (the module imported again) leaves the new class
 * with its Python methods. */

#define FUSED_STACK 64 /* messages of one read held on the stack; more on the heap */

enum {
    WS_PROTOCOL, WS_TRANSPORT, WS_LISTENER, WS_PENDING, WS_PENDING_SIZE, WS_BYTES_RECEIVED,
    WS_BYTES_SENT, WS_MESSAGES_RECEIVED, WS_MESSAGES_SENT, WS_WAITER, WS_MESSAGES,
    WS_PROCESSING, WS_LOST, WS_LOOP, WS_CLOSE_TIMER, WS_IN_READ, WS_SLOTS,
    /* and the methods whose work the fused ones do themselves */
    WS_PROCESS_EVENTS = WS_SLOTS, WS_RECEIVE, WS_FIELDS
};
static const char *const ws_fields[WS_FIELDS] = {
    "protocol", "transport", "_listener", "_pending", "_pending_size", "bytes_received",
    "bytes_sent", "messages_received", "messages_sent", "_waiter", "_messages", "_processing",
    "_lost", "loop", "_close_timer", "_in_read", "_process_events", "_receive",
};
enum {
    C_STATE, C_INPUT_CLOSED, C_LARGE_FRAME, C_BUFFER, C_MSG_OPCODE, C_IS_SERVER,
    C_MAX_MESSAGE_SIZE, C_EXTENSION, C_CLOSE_SENT, C_SEND_OPCODE, C_OUTPUT, C_RECEIVE_ERROR,
    C_EVENTS, C_SLOTS, C_RECEIVE_DATA = C_SLOTS, C_FRAME_MESSAGE, C_FIELDS
};
static const char *const conn_fields[C_FIELDS] = {
    "state", "input_closed", "large_frame", "_buffer", "_msg_opcode", "_is_server",
    "max_message_size", "extension", "close_sent", "_send_opcode", "_output", "receive_error",
    "_events", "receive_data", "frame_message",
};

#define VERIFIED_TYPES 8
#define MAX_FIELDS 20

typedef struct {
    PyObject *descriptors[MAX_FIELDS]; /* what the class resolves each name to */
    Py_ssize_t offsets[MAX_FIELDS];    /* of the slots: the first `slots` names */
    int slots;
    int count;
    const char *const *names;
    PyTypeObject *verified[VERIFIED_TYPES]; /* strong references */
    unsigned int tags[VERIFIED_TYPES];      /* their version tags when checked (0: none) */
} Layout;

static Layout ws_layout = {.slots = WS_SLOTS, .count = WS_FIELDS, .names = ws_fields};
static Layout conn_layout = {.slots = C_SLOTS, .count = C_FIELDS, .names = conn_fields};
static PyTypeObject *ws_type, *conn_type;
static PyObject *open_state, *zero, *empty_bytes, *text_type, *binary_type;
static PyObject *current_tasks; /* asyncio's {loop: the Task running}, or NULL */
/* The Python methods that the fused ones replace, in fused_defs' order. */
enum {
    FUSED_DATA_RECEIVED, FUSED_SEND_NOWAIT, FUSED_END_TURN, FUSED_FLUSH, FUSED_RECV,
    FUSED_ANEXT, FUSED_METHODS
};
static PyObject *generals[FUSED_METHODS];
#define general_data_received generals[FUSED_DATA_RECEIVED]
#define general_send_nowait generals[FUSED_SEND_NOWAIT]
#define general_end_turn generals[FUSED_END_TURN]
#define general_flush generals[FUSED_FLUSH]
#define general_recv generals[FUSED_RECV]
#define general_anext generals[FUSED_ANEXT]
static PyObject *str_on_message, *str_listener_failed, *str_write, *str_ws_write, *str_flush,
    *str_receive_close, *str_done, *str_set_result, *str_call_soon, *str_end_turn,
    *str_process_events, *str_join;
static Py_ssize_t join_limit, coalesce_limit;

#define FIELD(obj, layout, i) (*(PyObject **)((char *)(obj) + (layout).offsets[i]))
#define WS(obj, i) FIELD(obj, ws_layout, i)
#define CONN(obj, i) FIELD(obj, conn_layout, i)

/* Find the slots of layout's names on type (strong references to their descriptors). */
static int
layout_slots(Layout *layout, PyTypeObject *type)
{
    int i;
    for (i = 0; i < layout->slots; i++) {
        PyObject *descr = PyObject_GetAttrString((PyObject *)type, layout->names[i]);
        if (descr == NULL) {
            return -1;
        }
        if (!Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != Py_T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name,
                         layout->names[i]);
            Py_DECREF(descr);
            return -1;
        }
        layout->offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        layout->descriptors[i] = descr;
    }
    return 0;
}

/* What type resolves layout's method names to, once the fused methods are in place. */
static int
layout_methods(Layout *layout, PyTypeObject *type)
{
    int i;
    for (i = layout->slots; i < layout->count; i++) {
        layout->descriptors[i] = PyObject_GetAttrString((PyObject *)type, layout->names[i]);
        if (layout->descriptors[i] == NULL) {
            return -1;
        }
    }
    return 0;
}

static unsigned int
version_tag(PyTypeObject *type)
{
#ifdef Py_TPFLAGS_VALID_VERSION_TAG
    if (!(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        return 0;
    }
#endif
    return type->tp_version_tag;
}

/* Whether obj's class resolves layout's names as base does (see above). */
static int
layout_fits(Layout *layout, PyTypeObject *base, PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    unsigned int tag;
    int i, j;
    for (i = 0; i < VERIFIED_TYPES && layout->verified[i] != NULL; i++) {
        if (layout->verified[i] == type) {
            if (layout->tags[i] != 0 && layout->tags[i] == version_tag(type)) {
                return 1;
            }
            break; /* changed since it was checked */
        }
    }
    if (!PyType_IsSubtype(type, base)) {
        return 0;
    }
    for (j = 0; j < layout->count; j++) {
        PyObject *descr = PyObject_GetAttrString((PyObject *)type, layout->names[j]);
        if (descr == NULL) {
            PyErr_Clear();
            return 0;
        }
        Py_DECREF(descr);
        if (descr != layout->descriptors[j]) {
            if (i < VERIFIED_TYPES && layout->verified[i] == type) {
                layout->tags[i] = 0;
            }
            return 0;
        }
    }
    tag = version_tag(type); /* (the lookups above gave it one if it had none) */
    if (i < VERIFIED_TYPES) {
        if (layout->verified[i] == NULL) {
            Py_INCREF(type);
            layout->verified[i] = type;
        }
        layout->tags[i] = tag;
    }
    return 1;
}

/* obj's slot i holds an int: add n to it. */
static int
add_to(PyObject *obj, Py_ssize_t offset, Py_ssize_t n)
{
    PyObject **slot = (PyObject **)((char *)obj + offset);
    PyObject *sum, *delta;
    if (*slot != NULL && PyLong_CheckExact(*slot)) {
        Py_ssize_t value = PyLong_AsSsize_t(*slot);
        if (value >= 0 && value <= PY_SSIZE_T_MAX - n) {
            sum = PyLong_FromSsize_t(value + n);
            if (sum == NULL) {
                return -1;
            }
            Py_SETREF(*slot, sum);
            return 0;
        }
        PyErr_Clear(); /* negative or huge: as Python adds */
    }
    delta = PyLong_FromSsize_t(n);
    if (delta == NULL) {
        return -1;
    }
    sum = *slot == NULL ? NULL : PyNumber_Add(*slot, delta);
    Py_DECREF(delta);
    if (sum == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_AttributeError, "counter not set");
        }
        return -1;
    }
    Py_SETREF(*slot, sum);
    return 0;
}

static void
set_field(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    PyObject **slot = (PyObject **)((char *)obj + offset);
    Py_INCREF(value);
    Py_XSETREF(*slot, value);
}

#define SET_WS(obj, i, value) set_field(obj, ws_layout.offsets[i], value)
#define SET_CONN(obj, i, value) set_field(obj, conn_layout.offsets[i], value)

/* ws._listener_failed("on_message") with the current exception as the one being handled,
 * as an `except Exception:` block would call it. 0, or -1 with an exception set. */
static int
listener_failed(PyObject *ws)
{
    PyObject *type, *value, *tb, *saved_type, *saved_value, *saved_tb, *result;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    PyErr_GetExcInfo(&saved_type, &saved_value, &saved_tb);
    PyErr_SetExcInfo(type, value, tb);
    result = PyObject_CallMethodOneArg(ws, str_listener_failed, str_on_message);
    PyErr_SetExcInfo(saved_type, saved_value, saved_tb);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* b"".join(chunks) for a list of chunks. */
static PyObject *
join_chunks(PyObject *chunks)
{
    Py_ssize_t i, n = PyList_GET_SIZE(chunks), total = 0;
    PyObject *joined;
    char *out;
    for (i = 0; i < n; i++) {
        PyObject *chunk = PyList_GET_ITEM(chunks, i);
        if (!PyBytes_CheckExact(chunk)) { /* a large payload as it was sent: bytes-like */
            return PyObject_CallMethodOneArg(empty_bytes, str_join, chunks);
        }
        total += PyBytes_GET_SIZE(chunk);
    }
    joined = PyBytes_FromStringAndSize(NULL, total);
    if (joined == NULL) {
        return NULL;
    }
    out = PyBytes_AS_STRING(joined);
    for (i = 0; i < n; i++) {
        PyObject *chunk = PyList_GET_ITEM(chunks, i);
        memcpy(out, PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk));
        out += PyBytes_GET_SIZE(chunk);
    }
    return joined;
}

/* The Python methods' `self.transport.write(pending[0] if len(pending) == 1 else
 * b"".join(pending))`, when pending (a list) holds something, the transport is there and the
 * connection is not lost. 0, or -1 with an exception set. */
static int
write_pending(PyObject *ws, PyObject *pending)
{
    PyObject *transport = WS(ws, WS_TRANSPORT), *chunk, *result;
    Py_ssize_t n = PyList_GET_SIZE(pending);
    if (n == 0 || transport == NULL || transport == Py_None || WS(ws, WS_LOST) != Py_False) {
        return 0;
    }
    if (n == 1) {
        chunk = PyList_GET_ITEM(pending, 0);
        Py_INCREF(chunk);
    }
    else {
        chunk = join_chunks(pending);
        if (chunk == NULL) {
            return -1;
        }
    }
    Py_INCREF(transport);
    result = PyObject_CallMethodOneArg(transport, str_write, chunk);
    Py_DECREF(transport);
    Py_DECREF(chunk);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* WebSocket._end_turn: write what the turn gathered, and gather no more. */
static int
end_turn(PyObject *ws)
{
    PyObject *pending = WS(ws, WS_PENDING);
    int written;
    if (pending == NULL) {
        return 0;
    }
    WS(ws, WS_PENDING) = Py_None; /* the reference moves to `pending` */
    Py_INCREF(Py_None);
    SET_WS(ws, WS_PENDING_SIZE, zero);
    written = PyList_Check(pending) ? write_pending(ws, pending) : 0;
    Py_DECREF(pending);
    return written;
}

/* A call of the Python method that a fused method replaces: self first, then the arguments. */
static PyObject *
call_general(PyObject *function, PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *stack[4];
    Py_ssize_t i;
    if (nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "too many arguments");
        return NULL;
    }
    stack[0] = self;
    for (i = 0; i < nargs; i++) {
        stack[i + 1] = args[i];
    }
    return PyObject_Vectorcall(function, stack, nargs + 1, NULL);
}

/* The call method(obj) for a method taking no argument; 0, or -1 with an exception set. */
static int
call_method_0(PyObject *obj, PyObject *name)
{
    PyObject *result = PyObject_CallMethodNoArgs(obj, name);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static int
call_method_1(PyObject *obj, PyObject *name, PyObject *arg)
{
    PyObject *result = PyObject_CallMethodOneArg(obj, name, arg);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* Whether no Task runs on loop now: a Task's step can be entered from here. */
static int
no_task_running(PyObject *loop)
{
    PyObject *task;
    if (current_tasks == NULL || loop == NULL) {
        return 0;
    }
    task = PyDict_GetItemWithError(current_tasks, loop);
    if (task == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return task == NULL;
}

/* ws._process_events() for the messages a changed listener left: what it returns (whether a
 * waiting recv() got one), or -1 with an exception set. */
static int
hand_over(PyObject *ws, PyObject **messages, Py_ssize_t n)
{
    PyObject *events = PyList_New(n), *result;
    Py_ssize_t i;
    long woke;
    if (events == NULL) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        PyObject *event;
        Py_INCREF(messages[i]);
        event = new_event((PyTypeObject *)(PyUnicode_CheckExact(messages[i]) ? text_type
                                                                                : binary_type),
                          messages[i]);
        if (event == NULL) {
            Py_DECREF(events);
            return -1;
        }
        PyList_SET_ITEM(events, i, event);
    }
    result = PyObject_CallMethodOneArg(ws, str_process_events, events);
    Py_DECREF(events);
    if (result == NULL) {
        return -1;
    }
    woke = PyLong_AsLong(result);
    Py_DECREF(result);
    if (woke == -1 && PyErr_Occurred()) {
        return -1;
    }
    return woke != 0;
}

/* ---- recv() and `async for`: Coroutine ----------------------------------------------------
 *
 * WebSocket.recv() and __anext__ return WebSocket._receive(iterating), a coroutine; the fused
 * ones return a Coroutine, a coroutine in every way asyncio asks (send, throw, close,
 * __await__: asyncio.iscoroutine() says yes, so create_task(ws.recv()) works; nothing happens
 * until it is awaited; dropped unawaited, it warns as a coroutine does), that does _receive's
 * common case without a Python frame: nothing queued, the connection open, nobody else
 * waiting: flush the replies (unless _in_read), await a new Waiter, clear it, return its
 * message. Any other case, found before anything changed, is the Python coroutine's: the
 * Coroutine creates ws._receive(iterating) and passes everything on to it.
 *
 * (send() stays the Python coroutine function: a builtin would not be one to
 * inspect.iscoroutinefunction(), which frameworks and unittest.mock's autospec ask.) */

enum { CORO_FRESH, CORO_WAITING, CORO_INNER, CORO_DONE };

typedef struct {
    PyObject_HEAD
    PyObject *ws;
    PyObject *waiter; /* while waiting */
    PyObject *inner;  /* the Python coroutine it passes everything to */
    char iterating;
    char state;
} CoroutineObject;

static PyTypeObject CoroutineType;
static PyObject *closed_sentinel, *str_receive, *str_end_error;

static int
coroutine_traverse(CoroutineObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ws);
    Py_VISIT(self->waiter);
    Py_VISIT(self->inner);
    return 0;
}

static int
coroutine_clear(CoroutineObject *self)
{
    Py_CLEAR(self->ws);
    Py_CLEAR(self->waiter);
    Py_CLEAR(self->inner);
    return 0;
}

static void
coroutine_dealloc(CoroutineObject *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return; /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    coroutine_clear(self);
    PyObject_GC_Del(self);
}

static void receive_finish(CoroutineObject *self);

/* As a coroutine's finalizer: one never awaited warns; one dropped while it waits runs
 * _receive's `finally` (ws._waiter let go). */
static void
coroutine_finalize(PyObject *obj)
{
    CoroutineObject *self = (CoroutineObject *)obj;
    PyObject *type, *value, *tb;
    if (self->state != CORO_FRESH && self->state != CORO_WAITING) {
        return;
    }
    PyErr_Fetch(&type, &value, &tb);
    if (self->state == CORO_WAITING) {
        receive_finish(self);
    }
    else {
        self->state = CORO_DONE;
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "coroutine '%s' was never awaited",
                             self->iterating ? "WebSocket.__anext__" : "WebSocket.recv") < 0) {
            PyErr_WriteUnraisable(obj);
        }
    }
    PyErr_Restore(type, value, tb);
}

static PyObject *
new_coroutine(PyObject *ws, int iterating)
{
    CoroutineObject *self = PyObject_GC_New(CoroutineObject, &CoroutineType);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(ws);
    self->ws = ws;
    self->waiter = self->inner = NULL;
    self->iterating = (char)iterating;
    self->state = CORO_FRESH;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* From here on, everything to the Python coroutine `inner` (a new reference, or NULL). */
static PySendResult
pass_on(CoroutineObject *self, PyObject *inner, PyObject **result)
{
    self->inner = inner;
    if (inner == NULL) {
        self->state = CORO_DONE;
        return PYGEN_ERROR;
    }
    self->state = CORO_INNER;
    return PyIter_Send(inner, Py_None, result);
}

/* _receive's `finally`: the Waiter is no longer ws._waiter once the wait ends. */
static void
receive_finish(CoroutineObject *self)
{
    PyObject *ws = self->ws, *waiter = self->waiter;
    if (waiter != NULL && ws != NULL && WS(ws, WS_WAITER) == waiter) {
        SET_WS(ws, WS_WAITER, Py_None);
    }
    Py_CLEAR(self->waiter);
    self->state = CORO_DONE;
}

/* _receive's first step. */
static PySendResult
receive_start(CoroutineObject *self, PyObject **result)
{
    PyObject *ws = self->ws, *protocol = WS(ws, WS_PROTOCOL), *messages = WS(ws, WS_MESSAGES);
    PyObject *pending = WS(ws, WS_PENDING), *loop = WS(ws, WS_LOOP), *waiter;
    PyObject *stack[1];
    Py_ssize_t queued = messages == NULL ? -1 : PyObject_Size(messages);
    if (queued < 0) {
        PyErr_Clear();
    }
    if (queued == 0 && WS(ws, WS_LOST) == Py_False && WS(ws, WS_WAITER) == Py_None && loop != NULL &&
        WS(ws, WS_IN_READ) != NULL && protocol != NULL &&
        layout_fits(&conn_layout, conn_type, protocol) &&
        CONN(protocol, C_INPUT_CLOSED) == Py_False) {
        SET_WS(ws, WS_PROCESSING, Py_False);
        if (pending != NULL && PyList_CheckExact(pending) && PyList_GET_SIZE(pending) > 0 &&
            WS(ws, WS_IN_READ) == Py_False && call_method_0(ws, str_flush) < 0) {
            self->state = CORO_DONE;
            return PYGEN_ERROR;
        }
        if (WS(ws, WS_WAITER) != Py_None) { /* (the flush ran code that waits: its error) */
            goto python;
        }
        stack[0] = loop;
        waiter = waiter_vectorcall((PyObject *)&WaiterType, stack, 1, NULL);
        if (waiter == NULL) {
            self->state = CORO_DONE;
            return PYGEN_ERROR;
        }
        SET_WS(ws, WS_WAITER, waiter);
        self->waiter = waiter;
        self->state = CORO_WAITING;
        return waiter_am_send(waiter, Py_None, result); /* itself, to the Task */
    }
python:
    return pass_on(self,
                   PyObject_CallMethodOneArg(ws, str_receive,
                                             self->iterating ? Py_True : Py_False),
                   result);
}

static PySendResult
coroutine_am_send(PyObject *obj, PyObject *arg, PyObject **result)
{
    CoroutineObject *self = (CoroutineObject *)obj;
    PySendResult status;
    PyObject *error;
    if (self->ws == NULL) { /* (cleared by the collector) */
        self->state = CORO_DONE;
    }
    switch (self->state) {
    case CORO_FRESH:
        if (arg != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "can't send non-None value to a just-started coroutine");
            return PYGEN_ERROR;
        }
        return receive_start(self, result);
    case CORO_WAITING:
        status = waiter_am_send(self->waiter, arg, result);
        if (status == PYGEN_NEXT) { /* (it raises rather than yield twice) */
            return status;
        }
        receive_finish(self);
        if (status == PYGEN_RETURN && *result == closed_sentinel) {
            Py_DECREF(*result);
            *result = NULL;
            error = PyObject_CallMethodOneArg(self->ws, str_end_error,
                                              self->iterating ? Py_True : Py_False);
            if (error != NULL) {
                PyErr_SetObject((PyObject *)Py_TYPE(error), error);
                Py_DECREF(error);
            }
            return PYGEN_ERROR;
        }
        return status;
    case CORO_INNER:
        status = PyIter_Send(self->inner, arg, result);
        if (status != PYGEN_NEXT) {
            Py_CLEAR(self->inner);
            self->state = CORO_DONE;
        }
        return status;
    default:
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
}

static PyObject *
coroutine_send(PyObject *obj, PyObject *arg)
{
    PyObject *result;
    switch (coroutine_am_send(obj, arg, &result)) {
    case PYGEN_NEXT:
        return result;
    case PYGEN_RETURN:
        return stop_iteration(result);
    default:
        return NULL;
    }
}

static PyObject *
coroutine_iternext(PyObject *obj)
{
    return coroutine_send(obj, Py_None);
}

/* coroutine.throw(): into the Python coroutine if it has one; else raised where the
 * coroutine stands (waiting: after _receive's `finally`). */
static PyObject *
coroutine_throw(PyObject *obj, PyObject *const *args, Py_ssize_t nargs)
{
    CoroutineObject *self = (CoroutineObject *)obj;
    PyObject *type, *value, *tb;
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw() takes 1 to 3 arguments");
        return NULL;
    }
    if (self->state == CORO_INNER) {
        PyObject *method = PyObject_GetAttrString(self->inner, "throw"), *result;
        if (method == NULL) {
            return NULL;
        }
        result = PyObject_Vectorcall(method, args, nargs, NULL);
        Py_DECREF(method);
        if (result == NULL) {
            Py_CLEAR(self->inner);
            self->state = CORO_DONE;
        }
        return result;
    }
    if (self->state == CORO_WAITING) {
        receive_finish(self);
    }
    self->state = CORO_DONE;
    type = args[0];
    value = nargs > 1 ? args[1] : Py_None;
    tb = nargs > 2 ? args[2] : Py_None;
    if (tb != Py_None && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    if (PyExceptionInstance_Check(type)) {
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        if (tb != Py_None && PyException_SetTraceback(type, tb) < 0) {
            return NULL;
        }
        PyErr_SetObject((PyObject *)Py_TYPE(type), type);
        return NULL;
    }
    if (PyExceptionClass_Check(type)) {
        PyErr_SetObject(type, value);
        return NULL;
    }
    PyErr_Format(PyExc_TypeError,
                 "exceptions must be classes or instances deriving from BaseException, not %s",
                 Py_TYPE(type)->tp_name);
    return NULL;
}

static PyObject *
coroutine_close(PyObject *obj, PyObject *unused)
{
    CoroutineObject *self = (CoroutineObject *)obj;
    if (self->state == CORO_INNER) {
        PyObject *result = PyObject_CallMethod(self->inner, "close", NULL);
        Py_CLEAR(self->inner);
        self->state = CORO_DONE;
        return result;
    }
    if (self->state == CORO_WAITING) {
        receive_finish(self);
    }
    self->state = CORO_DONE;
    Py_RETURN_NONE;
}

static PyObject *
coroutine_await(PyObject *obj)
{
    CoroutineObject *self = (CoroutineObject *)obj;
    if (self->state == CORO_WAITING || self->state == CORO_INNER) {
        PyErr_SetString(PyExc_RuntimeError, "coroutine is being awaited already");
        return NULL;
    }
    Py_INCREF(obj);
    return obj;
}

static PyObject *
coroutine_name(CoroutineObject *self, void *qualified)
{
    const char *name = self->iterating ? "__anext__" : "recv";
    return qualified ? PyUnicode_FromFormat("WebSocket.%s", name) : PyUnicode_FromString(name);
}

/* cr_await: what it waits on (its Waiter, or the Python coroutine it passes things to). */
static PyObject *
coroutine_cr_await(CoroutineObject *self, void *closure)
{
    PyObject *awaited = self->state == CORO_WAITING ? self->waiter
                        : self->state == CORO_INNER ? self->inner
                                                      : NULL;
    if (awaited == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(awaited);
    return awaited;
}

static PyObject *
coroutine_suspended(CoroutineObject *self, void *closure)
{
    return PyBool_FromLong(self->state == CORO_WAITING || self->state == CORO_INNER);
}

static PyObject *
coroutine_none(PyObject *self, void *closure)
{
    Py_RETURN_NONE; /* no frame, no code: compiled */
}

static PyObject *
coroutine_false(PyObject *self, void *closure)
{
    Py_RETURN_FALSE; /* (never running: it runs no Python code of its own) */
}

static PyGetSetDef coroutine_getset[] = {
    {"__name__", (getter)coroutine_name, NULL, NULL, NULL},
    {"__qualname__", (getter)coroutine_name, NULL, NULL, (void *)1},
    {"cr_await", (getter)coroutine_cr_await, NULL, NULL, NULL},
    {"cr_suspended", (getter)coroutine_suspended, NULL, NULL, NULL},
    {"cr_running", (getter)coroutine_false, NULL, NULL, NULL},
    {"cr_frame", (getter)coroutine_none, NULL, NULL, NULL},
    {"cr_code", (getter)coroutine_none, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef coroutine_methods[] = {
    {"send", (PyCFunction)coroutine_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))coroutine_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)coroutine_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods coroutine_async = {
    .am_await = coroutine_await,
    .am_send = coroutine_am_send,
};

static PyTypeObject CoroutineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tether.accel._speedups.Coroutine",
    .tp_doc = "What the compiled WebSocket.recv() and __anext__() return: a coroutine that "
              "does WebSocket._receive's common case in C.",
    .tp_basicsize = sizeof(CoroutineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)coroutine_dealloc,
    .tp_traverse = (traverseproc)coroutine_traverse,
    .tp_clear = (inquiry)coroutine_clear,
    .tp_as_async = &coroutine_async,
    .tp_iternext = coroutine_iternext,
    .tp_methods = coroutine_methods,
    .tp_getset = coroutine_getset,
    .tp_finalize = coroutine_finalize,
};

/* WebSocket.data_received; see the top of this section. */
static PyObject *
fused_data_received(PyObject *ws, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *data, *protocol, *listener, *waiter = NULL, *buffer, *limit_obj, *pending, *events;
    PyObject *stack[FUSED_STACK], **messages = stack;
    Py_ssize_t end, pos, header, n, limit, count = 0, delivered, most, i;
    const unsigned char *buf;
    int masked, woke = 0, failed = 0, resume = 0;
    PyObject *exit_type = NULL, *exit_value = NULL, *exit_tb = NULL;

    if (nargs != 1 || !layout_fits(&ws_layout, ws_type, ws)) {
        goto general;
    }
    data = args[0];
    protocol = WS(ws, WS_PROTOCOL);
    listener = WS(ws, WS_LISTENER);
    if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) == 0 || protocol == NULL ||
        listener == NULL || WS(ws, WS_PENDING) != Py_None ||
        !layout_fits(&conn_layout, conn_type, protocol)) {
        goto general;
    }
    buffer = CONN(protocol, C_BUFFER);
    limit_obj = CONN(protocol, C_MAX_MESSAGE_SIZE);
    events = CONN(protocol, C_EVENTS);
    if (CONN(protocol, C_STATE) != open_state || CONN(protocol, C_INPUT_CLOSED) != Py_False ||
        events == NULL || !PyList_CheckExact(events) || PyList_GET_SIZE(events) != 0 ||
        CONN(protocol, C_LARGE_FRAME) != Py_None || CONN(protocol, C_MSG_OPCODE) != zero ||
        CONN(protocol, C_RECEIVE_ERROR) != Py_None || buffer == NULL ||
        !PyByteArray_CheckExact(buffer) || PyByteArray_GET_SIZE(buffer) != 0 ||
        limit_obj == NULL || (limit_obj != Py_None && !PyLong_CheckExact(limit_obj))) {
        goto general;
    }
    if (CONN(protocol, C_IS_SERVER) == Py_True) {
        masked = 1;
    }
    else if (CONN(protocol, C_IS_SERVER) == Py_False) {
        masked = 0;
    }
    else {
        goto general;
    }
    if (limit_obj == Py_None) {
        limit = -1;
    }
    else {
        limit = PyLong_AsSsize_t(limit_obj);
        if (limit < 0) {
            PyErr_Clear();
            goto general;
        }
    }
    if (listener == Py_None) {
        /* A coroutine, for a recv() already waiting: on a Waiter, each message in turn, its
         * step run at once (waiter_resume); on another Future, or while a Task runs (the step
         * could not enter its own), one message, as _process_events gives it. */
        PyObject *queued = WS(ws, WS_MESSAGES), *done;
        waiter = WS(ws, WS_WAITER);
        if (waiter == NULL || waiter == Py_None || queued == NULL || PyObject_Size(queued) != 0) {
            PyErr_Clear();
            goto general;
        }
        if (Py_IS_TYPE(waiter, &WaiterType) && WS(ws, WS_IN_READ) == Py_False &&
            no_task_running(WS(ws, WS_LOOP))) {
            if (((WaiterObject *)waiter)->state != WAITER_PENDING) {
                goto general;
            }
            resume = 1;
        }
        if (resume) {
            most = PY_SSIZE_T_MAX;
        }
        else if ((done = PyObject_CallMethodNoArgs(waiter, str_done)) != Py_False) {
            Py_XDECREF(done);
            PyErr_Clear(); /* (the Python method meets it again, where it would) */
            goto general;
        }
        else {
            Py_DECREF(done);
            most = 1;
        }
    }
    else {
        most = PY_SSIZE_T_MAX;
    }

    /* Whole messages in plain frames and nothing else, or the Python path: first the frames,
     * then the messages (a text that is not UTF-8 is the general parser's to report). */
    buf = (const unsigned char *)PyBytes_AS_STRING(data);
    end = PyBytes_GET_SIZE(data);
    for (pos = 0; pos < end; pos += header + n) {
        if (count == most || !plain_frame(buf, pos, end, masked, limit, &header, &n)) {
            goto general;
        }
        count++;
    }
    if (count > FUSED_STACK) {
        messages = PyMem_Malloc(count * sizeof(PyObject *));
        if (messages == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
    }
    for (pos = 0, i = 0; i < count; i++, pos += header + n) {
        plain_frame(buf, pos, end, masked, limit, &header, &n);
        messages[i] = frame_message(buf + pos, header, n, masked);
        if (messages[i] == NULL) {
            while (i > 0) {
                Py_DECREF(messages[--i]);
            }
            if (messages != stack) {
                PyMem_Free(messages);
            }
            if (PyErr_Occurred()) {
                return NULL;
            }
            goto general;
        }
    }

    /* From here on, as the Python methods do it. */
    delivered = count;
    Py_INCREF(protocol);
    Py_INCREF(listener);
    if (add_to(ws, ws_layout.offsets[WS_BYTES_RECEIVED], end) < 0) {
        failed = 1;
        goto done;
    }
    pending = PyList_New(0);
    if (pending == NULL) {
        failed = 1;
        goto done;
    }
    Py_SETREF(WS(ws, WS_PENDING), pending);
    if (listener != Py_None) {
        for (i = 0; i < count; i++) {
            PyObject *call[3] = {listener, ws, messages[i]};
            PyObject *result = PyObject_VectorcallMethod(str_on_message, call, 3, NULL);
            if (result != NULL) {
                Py_DECREF(result);
            }
            else if (!PyErr_ExceptionMatches(PyExc_Exception) || listener_failed(ws) < 0) {
                failed = 1;
                goto done;
            }
            if (WS(ws, WS_LISTENER) != listener && i + 1 < count) {
                /* The listener changed (handed over to recv(), say): the rest as events. */
                woke = hand_over(ws, messages + i + 1, count - i - 1);
                if (woke < 0) {
                    failed = 1;
                    goto done;
                }
                delivered = i + 1;
                break;
            }
        }
    }
    else if (resume) {
        /* Each message to the recv() waiting for it, whose step runs now and, waiting again,
         * leaves the next Waiter: replies gather in the batch, which this read's end writes
         * (_receive does not flush while _in_read). Once nobody waits (the handler awaits
         * something else, has ended, or set a listener), the rest as events. */
        delivered = 0; /* counted one by one: the step sees its message counted */
        SET_WS(ws, WS_IN_READ, Py_True);
        for (i = 0; i < count; i++) {
            PyObject *next = WS(ws, WS_WAITER);
            int resumed;
            if (WS(ws, WS_LISTENER) != Py_None || next == NULL || !Py_IS_TYPE(next, &WaiterType) ||
                ((WaiterObject *)next)->state != WAITER_PENDING) {
                SET_WS(ws, WS_IN_READ, Py_False);
                woke = hand_over(ws, messages + i, count - i);
                if (woke < 0) {
                    failed = 1;
                    goto done;
                }
                break;
            }
            if (add_to(ws, ws_layout.offsets[WS_MESSAGES_RECEIVED], 1) < 0) {
                failed = 1;
                goto done;
            }
            Py_INCREF(next);
            SET_WS(ws, WS_WAITER, Py_None);
            SET_WS(ws, WS_PROCESSING, Py_True);
            resumed = waiter_resume((WaiterObject *)next, messages[i]) == 0;
            Py_DECREF(next);
            if (!resumed) {
                /* KeyboardInterrupt or SystemExit from the step: held while the read ends as
                 * it would have (the rest as events, the turn's write), then raised, as it
                 * would come from the loop's Handle of the step. */
                PyErr_Fetch(&exit_type, &exit_value, &exit_tb);
                SET_WS(ws, WS_IN_READ, Py_False);
                if (i + 1 < count) {
                    woke = hand_over(ws, messages + i + 1, count - i - 1);
                    if (woke < 0) {
                        PyErr_WriteUnraisable(ws);
                        woke = 0;
                    }
                }
                break;
            }
        }
        SET_WS(ws, WS_IN_READ, Py_False);
    }
    else {
        PyObject *end_turn_method;
        Py_INCREF(waiter);
        SET_WS(ws, WS_WAITER, Py_None);
        SET_WS(ws, WS_PROCESSING, Py_True);
        if (call_method_1(waiter, str_set_result, messages[0]) < 0) {
            Py_DECREF(waiter);
            failed = 1;
            goto done;
        }
        Py_DECREF(waiter);
        end_turn_method = PyObject_GetAttr(ws, str_end_turn);
        if (end_turn_method == NULL) {
            failed = 1;
            goto done;
        }
        failed = WS(ws, WS_LOOP) == NULL ||
                 call_method_1(WS(ws, WS_LOOP), str_call_soon, end_turn_method) < 0;
        Py_DECREF(end_turn_method);
        if (failed) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_AttributeError, "loop");
            }
            goto done;
        }
        woke = 1;
    }
    if (add_to(ws, ws_layout.offsets[WS_MESSAGES_RECEIVED], delivered) < 0) {
        failed = 1;
        goto done;
    }

    /* data_received's end. */
    if (CONN(protocol, C_RECEIVE_ERROR) != Py_None && WS(ws, WS_CLOSE_TIMER) == Py_None &&
        call_method_0(ws, str_receive_close) < 0) {
        failed = 1;
        goto done;
    }
    {
        PyObject *output = CONN(protocol, C_OUTPUT);
        if (output != NULL && PyList_Check(output) && PyList_GET_SIZE(output) > 0) {
            PyObject *fresh = PyList_New(0);
            if (fresh == NULL) {
                failed = 1;
                goto done;
            }
            Py_INCREF(output);
            Py_SETREF(CONN(protocol, C_OUTPUT), fresh);
            failed = call_method_1(ws, str_ws_write, output) < 0;
            Py_DECREF(output);
            if (failed) {
                goto done;
            }
        }
    }
    /* (A large frame cannot start here: only a read starts one, and this read had none.) */
    if (woke) {
        pending = WS(ws, WS_PENDING);
        if (pending != NULL && pending != Py_None &&
            (!PyList_CheckExact(pending) || PyList_GET_SIZE(pending) > 0) &&
            call_method_0(ws, str_flush) < 0) {
            failed = 1;
        }
    }
    else if (call_method_0(ws, str_end_turn) < 0) { /* (by name: an instance's own counts) */
        failed = 1;
    }

done:
    if (resume) {
        SET_WS(ws, WS_IN_READ, Py_False);
    }
    for (i = 0; i < count; i++) {
        Py_DECREF(messages[i]);
    }
    if (messages != stack) {
        PyMem_Free(messages);
    }
    Py_DECREF(listener);
    Py_DECREF(protocol);
    if (exit_type != NULL) {
        if (failed) {
            PyErr_WriteUnraisable(ws); /* (an error of the read's end, after the exit) */
        }
        PyErr_Restore(exit_type, exit_value, exit_tb);
        return NULL;
    }
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;

general:
    return call_general(general_data_received, ws, args, nargs);
}

/* WebSocket.send_nowait; see the top of this section. */
static PyObject *
fused_send_nowait(PyObject *ws, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *message, *protocol, *output, *chunk, *pending, *encoded = NULL;
    const char *data;
    Py_ssize_t n, size, pending_size;
    unsigned char first;

    if (nargs != 1 || !layout_fits(&ws_layout, ws_type, ws)) {
        goto general;
    }
    message = args[0];
    protocol = WS(ws, WS_PROTOCOL);
    if (protocol == NULL || !layout_fits(&conn_layout, conn_type, protocol)) {
        goto general;
    }
    output = CONN(protocol, C_OUTPUT);
    /* Connection.frame_message's conditions, but the size. */
    if (CONN(protocol, C_IS_SERVER) != Py_True || CONN(protocol, C_EXTENSION) != Py_None ||
        CONN(protocol, C_STATE) != open_state || CONN(protocol, C_CLOSE_SENT) != Py_None ||
        CONN(protocol, C_SEND_OPCODE) != zero || output == NULL ||
        !PyList_CheckExact(output) || PyList_GET_SIZE(output) != 0) {
        goto general;
    }
    if (PyUnicode_CheckExact(message)) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(message) < 0) {
            PyErr_Clear();
            goto general;
        }
#endif
        if (PyUnicode_GET_LENGTH(message) > join_limit) {
            goto general; /* (its UTF-8 is at least as long) */
        }
        if (PyUnicode_IS_ASCII(message)) {
            data = (const char *)PyUnicode_DATA(message); /* ASCII is UTF-8 */
            n = PyUnicode_GET_LENGTH(message);
        }
        else {
            /* Encoded apart: PyUnicode_AsUTF8AndSize would keep a copy on the str. */
            encoded = PyUnicode_AsUTF8String(message);
            if (encoded == NULL) {
                PyErr_Clear(); /* lone surrogates: the Python method raises */
                goto general;
            }
            data = PyBytes_AS_STRING(encoded);
            n = PyBytes_GET_SIZE(encoded);
        }
        first = 0x81;
    }
    else if (PyBytes_CheckExact(message)) {
        data = PyBytes_AS_STRING(message);
        n = PyBytes_GET_SIZE(message);
        first = 0x82;
    }
    else {
        goto general;
    }
    if (n > join_limit) {
        Py_XDECREF(encoded);
        goto general;
    }
    chunk = build_frame(first, data, n);
    Py_XDECREF(encoded);
    if (chunk == NULL) {
        return NULL;
    }
    size = PyBytes_GET_SIZE(chunk);
    if (add_to(ws, ws_layout.offsets[WS_MESSAGES_SENT], 1) < 0) {
        Py_DECREF(chunk);
        return NULL;
    }
    pending = WS(ws, WS_PENDING);
    pending_size = -1;
    if (pending != NULL && pending != Py_None && PyList_CheckExact(pending) &&
        WS(ws, WS_PENDING_SIZE) != NULL) {
        pending_size = PyLong_AsSsize_t(WS(ws, WS_PENDING_SIZE));
        if (pending_size == -1 && PyErr_Occurred()) {
            Py_DECREF(chunk);
            return NULL;
        }
    }
    if (pending_size >= 0 && pending_size + size <= coalesce_limit) {
        PyObject *new_size = PyLong_FromSsize_t(pending_size + size);
        if (new_size == NULL || add_to(ws, ws_layout.offsets[WS_BYTES_SENT], size) < 0 ||
            PyList_Append(pending, chunk) < 0) {
            Py_XDECREF(new_size);
            Py_DECREF(chunk);
            return NULL;
        }
        Py_SETREF(WS(ws, WS_PENDING_SIZE), new_size);
        Py_DECREF(chunk);
    }
    else {
        PyObject *chunks = PyList_New(1);
        if (chunks == NULL) {
            Py_DECREF(chunk);
            return NULL;
        }
        PyList_SET_ITEM(chunks, 0, chunk);
        if (call_method_1(ws, str_ws_write, chunks) < 0) {
            Py_DECREF(chunks);
            return NULL;
        }
        Py_DECREF(chunks);
    }
    Py_RETURN_NONE;

general:
    return call_general(general_send_nowait, ws, args, nargs);
}

/* WebSocket._end_turn; see the top of this section. */
static PyObject *
fused_end_turn(PyObject *ws, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 0 || !layout_fits(&ws_layout, ws_type, ws)) {
        return call_general(general_end_turn, ws, args, nargs);
    }
    if (end_turn(ws) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* WebSocket._flush: write what was gathered, and go on gathering. */
static PyObject *
fused_flush(PyObject *ws, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *pending;
    int failed;
    if (nargs != 0 || !layout_fits(&ws_layout, ws_type, ws)) {
        return call_general(general_flush, ws, args, nargs);
    }
    pending = WS(ws, WS_PENDING);
    if (pending == NULL || !PyList_CheckExact(pending)) {
        return call_general(general_flush, ws, args, nargs);
    }
    if (PyList_GET_SIZE(pending) == 0) {
        Py_RETURN_NONE;
    }
    Py_INCREF(pending);
    failed = write_pending(ws, pending) < 0 ||
             PyList_SetSlice(pending, 0, PyList_GET_SIZE(pending), NULL) < 0;
    Py_DECREF(pending);
    if (failed) {
        return NULL;
    }
    SET_WS(ws, WS_PENDING_SIZE, zero);
    Py_RETURN_NONE;
}

/* WebSocket.recv and __anext__: a Receive (see above). */
static PyObject *
fused_recv(PyObject *ws, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 0 || !layout_fits(&ws_layout, ws_type, ws)) {
        return call_general(general_recv, ws, args, nargs);
    }
    return new_coroutine(ws, 0);
}

static PyObject *
fused_anext(PyObject *ws, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 0 || !layout_fits(&ws_layout, ws_type, ws)) {
        return call_general(general_anext, ws, args, nargs);
    }
    return new_coroutine(ws, 1);
}

static PyMethodDef fused_defs[] = {
    {"data_received", (PyCFunction)(void (*)(void))fused_data_received, METH_FASTCALL, NULL},
    {"send_nowait", (PyCFunction)(void (*)(void))fused_send_nowait, METH_FASTCALL, NULL},
    {"_end_turn", (PyCFunction)(void (*)(void))fused_end_turn, METH_FASTCALL, NULL},
    {"_flush", (PyCFunction)(void (*)(void))fused_flush, METH_FASTCALL, NULL},
    {"recv", (PyCFunction)(void (*)(void))fused_recv, METH_FASTCALL, NULL},
    {"__anext__", (PyCFunction)(void (*)(void))fused_anext, METH_FASTCALL, NULL},
};
static const char *const fused_signatures[FUSED_METHODS] = {
    "data_received($self, data, /)\n--\n\n",
    "send_nowait($self, message, /)\n--\n\n",
    "_end_turn($self, /)\n--\n\n",
    "_flush($self, /)\n--\n\n",
    "recv($self, /)\n--\n\n",
    "__anext__($self, /)\n--\n\n",
};

/* The Python method `name` of type, kept as the general path; its docstring, with the text
 * signature `signature`, becomes the fused method's. */
static PyObject *
take_general(PyTypeObject *type, PyMethodDef *def, const char *signature)
{
    PyObject *function = PyDict_GetItemString(type->tp_dict, def->ml_name), *doc;
    const char *text = "";
    char *copy;
    size_t size;
    if (function == NULL || !PyFunction_Check(function)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a Python function", type->tp_name,
                     def->ml_name);
        return NULL;
    }
    doc = PyObject_GetAttrString(function, "__doc__");
    if (doc == NULL) {
        return NULL;
    }
    if (PyUnicode_Check(doc)) {
        text = PyUnicode_AsUTF8(doc);
        if (text == NULL) {
            Py_DECREF(doc);
            return NULL;
        }
    }
    size = strlen(signature) + strlen(text) + 1;
    copy = PyMem_Malloc(size); /* kept: the method lives as long as the process */
    if (copy == NULL) {
        Py_DECREF(doc);
        return PyErr_NoMemory();
    }
    snprintf(copy, size, "%s%s", signature, text);
    Py_DECREF(doc);
    def->ml_doc = copy;
    Py_INCREF(function);
    return function;
}

static PyObject *
fuse(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int i;
    PyObject *descr;

    Py_BUILD_ASSERT(WS_FIELDS <= MAX_FIELDS && C_FIELDS <= MAX_FIELDS);
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "fuse() takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyType_Check(args[0]) || !PyType_Check(args[1]) || !PyType_Check(args[3]) ||
        !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type) || !PyType_Check(args[4]) ||
        !PyType_IsSubtype((PyTypeObject *)args[4], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "fuse() needs the WebSocket and Connection classes "
                                         "and the two message events' (tuple subclasses)");
        return NULL;
    }
    if (ws_type != NULL) {
        Py_RETURN_NONE; /* done once: another class keeps its Python methods */
    }
    join_limit = PyLong_AsSsize_t(args[5]);
    coalesce_limit = PyLong_AsSsize_t(args[6]);
    if ((join_limit == -1 || coalesce_limit == -1) && PyErr_Occurred()) {
        return NULL;
    }
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(str_on_message, "on_message");
    INTERN(str_listener_failed, "_listener_failed");
    INTERN(str_write, "write");
    INTERN(str_ws_write, "_write");
    INTERN(str_flush, "_flush");
    INTERN(str_receive_close, "_receive_close");
    INTERN(str_done, "done");
    INTERN(str_set_result, "set_result");
    INTERN(str_call_soon, "call_soon");
    INTERN(str_end_turn, "_end_turn");
    INTERN(str_process_events, "_process_events");
    INTERN(str_join, "join");
    INTERN(str_receive, "_receive");
    INTERN(str_end_error, "_end_error");
#undef INTERN
    zero = PyLong_FromLong(0);
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    if (zero == NULL || empty_bytes == NULL ||
        layout_slots(&ws_layout, (PyTypeObject *)args[0]) < 0 ||
        layout_slots(&conn_layout, (PyTypeObject *)args[1]) < 0) {
        return NULL;
    }
    for (i = 0; i < FUSED_METHODS; i++) {
        generals[i] = take_general((PyTypeObject *)args[0], &fused_defs[i],
                                   fused_signatures[i]);
        if (generals[i] == NULL) {
            return NULL;
        }
    }
    for (i = 0; i < 5; i++) {
        Py_INCREF(args[i]);
    }
    ws_type = (PyTypeObject *)args[0];
    conn_type = (PyTypeObject *)args[1];
    Py_INCREF(args[8]);
    closed_sentinel = args[8];
    if (PyDict_CheckExact(args[7])) { /* else no step is run from a read: Waiters are queued */
        Py_INCREF(args[7]);
        current_tasks = args[7];
    }
    open_state = args[2];
    text_type = args[3];
    binary_type = args[4];
    for (i = 0; i < FUSED_METHODS; i++) {
        descr = PyDescr_NewMethod(ws_type, &fused_defs[i]);
        if (descr == NULL ||
            PyObject_SetAttrString((PyObject *)ws_type, fused_defs[i].ml_name, descr) < 0) {
            Py_XDECREF(descr);
            return NULL;
        }
        Py_DECREF(descr);
    }
    if (layout_methods(&ws_layout, ws_type) < 0 || layout_methods(&conn_layout, conn_type) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
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
    {"fuse", (PyCFunction)(void (*)(void))fuse, METH_FASTCALL,
     "fuse(websocket, connection, open_state, text_type, binary_type, join_limit, "
     "coalesce_limit, current_tasks, closed) -> None\n\n"
     "Give websocket's per-message methods (data_received, send_nowait, _end_turn, _flush, recv, "
     "__anext__) their compiled fast paths; see tether/accel/_python.py."},
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
    PyObject *module;
    if (PyType_Ready(&PayloadType) < 0 || PyType_Ready(&WaiterType) < 0 ||
        PyType_Ready(&CoroutineType) < 0) {
        return NULL;
    }
    str_call_soon_w = PyUnicode_InternFromString("call_soon");
    context_kwnames = Py_BuildValue("(s)", "context");
    if (str_call_soon_w == NULL || context_kwnames == NULL) {
        return NULL;
    }
    module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&WaiterType);
    if (PyModule_AddObject(module, "Waiter", (PyObject *)&WaiterType) < 0) {
        Py_DECREF(&WaiterType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
