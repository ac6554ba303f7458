/*
 * loadgen.c - a small, fast WebSocket (RFC 6455) load generator.
 *
 * Single-threaded, epoll, non-blocking sockets, no third-party libraries.
 * Build:   gcc -O2 -o loadgen bench/loadgen.c
 *
 * Modes:
 *   echo       C connections, each keeping K messages of S bytes in flight;
 *              verifies every echoed message (opcode, length, sequence number
 *              and the first/last --verify bytes of payload); reports
 *              messages/s and round-trip latency percentiles.
 *   handshake  N iterations (C concurrent) of: TCP connect, opening
 *              handshake, close frame 1000, wait for the server's close frame
 *              and its TCP close; reports handshakes/s.
 *   broadcast  C connections that only read; counts received messages for
 *              D seconds (or until N messages in total).
 *   idle       C connections that complete the handshake and then hold the
 *              connection open, sending nothing, for D seconds or until a
 *              line (or EOF) arrives on stdin when stdin is a pipe; then
 *              close each one with close code 1000.
 *   relay      C connections to a relay (broadcast) server, which sends every
 *              message it receives to every open connection, sender included.
 *              Connection 0 sends --warmup W0 then -n N messages of S bytes,
 *              at most K in flight (sent, not yet received back by itself);
 *              every connection must receive every message, in order (the
 *              sequence number and payload are checked). After each batch of
 *              epoll events the client sleeps --sleep-us (default 1000 in this
 *              mode) so that messages pile up and one recv() takes several.
 *              The figures (deliveries = C x N, elapsed, client CPU) cover the
 *              N measured messages only, not the connects or the warm-up.
 *
 * --notify prints "open" on stderr once every connection is open and (in
 * broadcast mode with -n) "done" once every message has arrived, before the
 * connections are closed, so a driver can sample the server in between.
 * In relay mode with --notify and stdin a pipe: "open", then "warm" once every
 * connection has the warm-up messages, then it waits for a line on stdin
 * before sending the measured ones; "done" once every connection has them all,
 * then it waits for another line (or EOF) on stdin before closing.
 * --concurrency K keeps at most K connects/handshakes pending at once while
 * the connections are being opened (echo, broadcast, idle; 0 = all at once).
 *
 * Output: one line of JSON on stdout.  Errors (connection failure, protocol
 * violation, timeout) print a message on stderr and exit with status 1;
 * usage errors exit with status 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* configuration                                                       */

enum { MODE_ECHO, MODE_HANDSHAKE, MODE_BROADCAST, MODE_IDLE, MODE_RELAY };

static struct {
    int mode;
    const char *host;
    int port;
    const char *path;
    int conns;
    int inflight;
    size_t size;
    int binary;
    double duration; /* seconds, 0 = unset */
    uint64_t count;  /* messages (echo/broadcast) or iterations (handshake) */
    long verify;     /* bytes checked at head and tail; <0 = whole payload */
    double timeout;  /* seconds without progress before giving up */
    uint64_t seed;
    int notify;      /* print "open"/"done" on stderr */
    int concurrency; /* pending connects while opening; 0 = all */
    uint64_t warmup; /* relay: warm-up messages before the measured ones */
    long sleep_us;   /* sleep after each batch of epoll events; <0 = mode default */
} cfg = {
    .mode = MODE_ECHO,
    .host = "127.0.0.1",
    .port = 0,
    .path = "/",
    .conns = 1,
    .inflight = 1,
    .size = 32,
    .binary = 0,
    .duration = 0,
    .count = 0,
    .verify = 64,
    .timeout = 10.0,
    .seed = 0,
    .notify = 0,
    .concurrency = -1,
    .warmup = 0,
    .sleep_us = -1,
};

static const char *mode_name[] = {"echo", "handshake", "broadcast", "idle", "relay"};

/* RFC 6455 section 1.3 example key and its accept value. */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

/* ------------------------------------------------------------------ */
/* utilities                                                           */

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("loadgen: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void usage_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("loadgen: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(see loadgen --help)\n", stderr);
    exit(2);
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static inline uint64_t xorshift64(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return x;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q && n)
        die("out of memory (%zu bytes)", n);
    return q;
}

/* ------------------------------------------------------------------ */
/* latency histogram: log-linear, 128 sub-buckets per power of two     */
/* (< 0.8% relative error), values in nanoseconds.                     */

#define H_SUB_BITS 7
#define H_SUB (1u << H_SUB_BITS)
#define H_BUCKETS ((64 - H_SUB_BITS + 1) * H_SUB)

typedef struct {
    uint64_t counts[H_BUCKETS];
    uint64_t n, min, max;
    double sum;
} hist_t;

static hist_t hist;

static inline unsigned h_index(uint64_t v)
{
    if (v < 2 * H_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - H_SUB_BITS;
    return (shift + 1) * H_SUB + (unsigned)((v >> shift) - H_SUB);
}

static inline double h_value(unsigned idx)
{
    if (idx < 2 * H_SUB)
        return (double)idx;
    unsigned shift = idx / H_SUB - 1;
    uint64_t sub = idx % H_SUB + H_SUB;
    /* midpoint of the bucket */
    return (double)(sub << shift) + (double)(1ull << shift) / 2.0;
}

static inline void h_record(hist_t *h, uint64_t v)
{
    h->counts[h_index(v)]++;
    if (h->n == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->n++;
    h->sum += (double)v;
}

static double h_percentile(const hist_t *h, double q)
{
    if (h->n == 0)
        return 0;
    uint64_t target = (uint64_t)(q * (double)h->n);
    if (target < 1)
        target = 1;
    if (target > h->n)
        target = h->n;
    uint64_t acc = 0;
    for (unsigned i = 0; i < H_BUCKETS; i++) {
        acc += h->counts[i];
        if (acc >= target) {
            double v = h_value(i);
            if (v < (double)h->min)
                v = (double)h->min;
            if (v > (double)h->max)
                v = (double)h->max;
            return v;
        }
    }
    return (double)h->max;
}

/* ------------------------------------------------------------------ */
/* write buffer                                                        */

typedef struct {
    uint8_t *buf;
    size_t off, len, cap;
} wbuf_t;

static uint8_t *wb_reserve(wbuf_t *w, size_t extra)
{
    if (w->off == w->len)
        w->off = w->len = 0;
    if (w->len + extra > w->cap && w->off) {
        memmove(w->buf, w->buf + w->off, w->len - w->off);
        w->len -= w->off;
        w->off = 0;
    }
    if (w->len + extra > w->cap) {
        size_t nc = w->cap ? w->cap : 4096;
        while (nc < w->len + extra)
            nc *= 2;
        w->buf = xrealloc(w->buf, nc);
        w->cap = nc;
    }
    return w->buf + w->len;
}

/* ------------------------------------------------------------------ */
/* connections                                                         */

enum {
    ST_IDLE,       /* slot unused */
    ST_CONNECTING, /* TCP connect in progress */
    ST_HS_RECV,    /* request sent (or queued), waiting for 101 */
    ST_OPEN,
    ST_CLOSE_SENT, /* we sent a close frame, waiting for the server's */
    ST_WAIT_EOF,   /* close frames exchanged, waiting for TCP close */
    ST_DONE,
};

static const char *st_name[] = {"idle", "connecting", "handshake", "open",
                                "close-sent", "wait-tcp-close", "done"};

#define HS_MAX 8192

typedef struct conn {
    int fd;
    int state;
    int idx;
    int out_armed; /* EPOLLOUT registered */
    wbuf_t wb;
    uint64_t deadline; /* progress deadline (ns) while waiting */
    uint64_t t_begin;  /* handshake mode: start of cycle */

    char *hs; /* handshake response accumulator */
    size_t hs_len;

    /* frame parser */
    uint8_t hdr[14];
    int hdr_len;
    int in_payload;
    uint64_t pay_left;
    int f_op;
    int f_fin;
    int msg_op; /* opcode of data message in progress, 0 = none */
    uint64_t msg_len;
    uint8_t ctl[125];
    int ctl_len;
    int got_close;

    /* echo bookkeeping */
    uint64_t sent, recvd;
    int inflight;
    uint64_t *ts; /* ring of send timestamps, cfg.inflight entries */
    int ts_head;
} conn_t;

static conn_t *conns;
static int nconns;
static int epfd;
static struct sockaddr_storage srv_addr;
static socklen_t srv_addrlen;
static char hs_request[1024];
static size_t hs_request_len;

static uint8_t *tmpl; /* message template */
static int data_opcode;
static size_t seqlen; /* bytes of the sequence number embedded in payload */

#define RBUF_SIZE (256 * 1024)
static uint8_t rbuf[RBUF_SIZE];

/* global counters */
enum { P_CONNECT, P_RUN, P_DRAIN, P_CLOSE, P_END };
static int phase = P_CONNECT;
static int n_open;   /* connections that completed the handshake */
static int n_closed; /* connections fully closed */
static int n_active; /* handshake mode: slots in use */
static uint64_t total_sent, total_recv, total_inflight, total_bytes;
static uint64_t hs_started, hs_done;
static uint64_t t_start, t_last_recv, t_stop;
static uint64_t timeout_ns;
static int n_started; /* connections started so far (connect phase) */
static uint64_t t_all_open;
static int stdin_eof_early; /* stdin ended before all connections were open */
static int stdin_watched;
static int stdin_marker; /* epoll data.ptr for stdin */

/* relay mode */
enum { R_WARM, R_WAIT_GO, R_MEASURE, R_WAIT_STOP, R_FINISHED };
static int relay_stage = R_WARM;
static uint64_t relay_limit;  /* messages connection 0 may send in this stage */
static uint64_t relay_target; /* messages every connection must have by the end of it */
static int stdin_lines;       /* lines (EOF counts as many) read from stdin */
static int relay_gated;       /* --notify with stdin a pipe: wait for stdin lines */
static uint64_t r_t0, r_t1;   /* measured phase: "go" and the last delivery */
static double r_cpu0[2], r_cpu1[2]; /* client user, system CPU at those times */

static void cpu_now(double out[2])
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    out[0] = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    out[1] = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void notify(const char *what)
{
    if (cfg.notify) {
        fprintf(stderr, "%s\n", what);
        fflush(stderr);
    }
}

static void set_events(conn_t *c, int want_out)
{
    if (want_out == c->out_armed)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->out_armed = want_out;
}

static void flush(conn_t *c)
{
    wbuf_t *w = &c->wb;
    while (w->off < w->len) {
        ssize_t n = send(c->fd, w->buf + w->off, w->len - w->off, MSG_NOSIGNAL);
        if (n > 0) {
            w->off += (size_t)n;
            c->deadline = now_ns() + timeout_ns;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            die("connection %d: send failed in state %s: %s", c->idx, st_name[c->state],
                n < 0 ? strerror(errno) : "short write");
        }
    }
    if (w->off == w->len)
        w->off = w->len = 0;
    set_events(c, w->off < w->len);
}

/* XOR-copy n bytes with a 4-byte mask (mask phase starts at 0). */
static void mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t m[4])
{
    uint64_t m8;
    uint8_t mm[8] = {m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]};
    memcpy(&m8, mm, 8);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t a, b, c, d;
        memcpy(&a, src + i, 8);
        memcpy(&b, src + i + 8, 8);
        memcpy(&c, src + i + 16, 8);
        memcpy(&d, src + i + 24, 8);
        a ^= m8;
        b ^= m8;
        c ^= m8;
        d ^= m8;
        memcpy(dst + i, &a, 8);
        memcpy(dst + i + 8, &b, 8);
        memcpy(dst + i + 16, &c, 8);
        memcpy(dst + i + 24, &d, 8);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t a;
        memcpy(&a, src + i, 8);
        a ^= m8;
        memcpy(dst + i, &a, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ m[i & 3];
}

/* Append one masked frame header (+ mask key) to the buffer; returns the
 * pointer where the payload goes and the mask key in m. */
static uint8_t *put_header(conn_t *c, int opcode, size_t len, uint8_t m[4])
{
    size_t hl = 2 + (len < 126 ? 0 : len < 65536 ? 2 : 8) + 4;
    uint8_t *p = wb_reserve(&c->wb, hl + len);
    p[0] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        p[1] = (uint8_t)(0x80 | len);
        p += 2;
    } else if (len < 65536) {
        p[1] = 0x80 | 126;
        p[2] = (uint8_t)(len >> 8);
        p[3] = (uint8_t)len;
        p += 4;
    } else {
        p[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            p[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        p += 10;
    }
    uint32_t r = (uint32_t)xorshift64();
    memcpy(m, &r, 4);
    memcpy(p, m, 4);
    p += 4;
    c->wb.len += hl + len;
    return p;
}

static void queue_control(conn_t *c, int opcode, const uint8_t *payload, size_t len)
{
    uint8_t m[4];
    uint8_t *p = put_header(c, opcode, len, m);
    mask_copy(p, payload, len, m);
}

static void queue_close(conn_t *c)
{
    uint8_t code[2] = {1000 >> 8, 1000 & 0xff};
    queue_control(c, 0x8, code, 2);
    c->state = ST_CLOSE_SENT;
    c->deadline = now_ns() + timeout_ns;
}

/* Start the closing handshake on every connection. */
static void close_all(conn_t *conns, int nconns)
{
    for (int i = 0; i < nconns; i++) {
        queue_close(&conns[i]);
        flush(&conns[i]);
    }
}

static void seq_bytes(uint64_t seq, uint8_t out[8])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++) {
        if (cfg.binary)
            out[i] = (uint8_t)(seq >> (56 - 8 * i));
        else
            out[i] = (uint8_t)hex[(seq >> (28 - 4 * i)) & 0xf];
    }
}

static void queue_message(conn_t *c)
{
    uint8_t m[4];
    uint8_t *p = put_header(c, data_opcode, cfg.size, m);
    mask_copy(p, tmpl, cfg.size, m);
    uint8_t sb[8];
    seq_bytes(c->sent, sb);
    for (size_t i = 0; i < seqlen; i++)
        p[i] = sb[i] ^ m[i & 3];
    c->sent++;
    int slot = (c->ts_head + c->inflight) % cfg.inflight;
    c->ts[slot] = now_ns();
    c->inflight++;
    total_sent++;
    total_inflight++;
}

static int may_send(void)
{
    return phase == P_RUN && (cfg.count == 0 || total_sent < cfg.count);
}

/* ------------------------------------------------------------------ */
/* connection lifecycle                                                */

static void start_connection(conn_t *c)
{
    int fd = socket(srv_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = ST_CONNECTING;
    c->out_armed = 1;
    c->wb.off = c->wb.len = 0;
    c->hs_len = 0;
    c->hdr_len = 0;
    c->in_payload = 0;
    c->pay_left = 0;
    c->msg_op = 0;
    c->msg_len = 0;
    c->ctl_len = 0;
    c->got_close = 0;
    c->sent = c->recvd = 0;
    c->inflight = 0;
    c->ts_head = 0;
    c->t_begin = now_ns();
    c->deadline = c->t_begin + timeout_ns;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&srv_addr, srv_addrlen) < 0 && errno != EINPROGRESS)
        die("connect to %s:%d failed: %s", cfg.host, cfg.port, strerror(errno));
    n_active++;
    if (cfg.mode == MODE_HANDSHAKE)
        hs_started++;
}

static void on_connected(conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err)
        die("connect to %s:%d failed: %s", cfg.host, cfg.port, strerror(err));
    c->state = ST_HS_RECV;
    c->deadline = now_ns() + timeout_ns;
    memcpy(wb_reserve(&c->wb, hs_request_len), hs_request, hs_request_len);
    c->wb.len += hs_request_len;
    flush(c);
}

static void start_connection(conn_t *c);

static void on_open(conn_t *c)
{
    c->state = ST_OPEN;
    n_open++;
    if (cfg.mode != MODE_HANDSHAKE && n_started < nconns)
        start_connection(&conns[n_started++]);
    if (cfg.mode == MODE_HANDSHAKE) {
        queue_close(c);
    } else if (cfg.mode == MODE_ECHO && phase == P_RUN) {
        /* cannot happen: all connections open before P_RUN */
    }
}

static void on_closed(conn_t *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = ST_DONE;
    n_closed++;
    n_active--;
    if (cfg.mode == MODE_HANDSHAKE) {
        uint64_t t = now_ns();
        h_record(&hist, t - c->t_begin);
        hs_done++;
        t_last_recv = t;
        if (hs_started < cfg.count && phase == P_RUN)
            start_connection(c);
        else
            c->state = ST_IDLE;
    }
}

/* case-insensitive search for a header line; returns pointer to its value */
static const char *find_header(const char *resp, const char *name)
{
    size_t nl = strlen(name);
    const char *p = strstr(resp, "\r\n");
    while (p && p[2] != '\r') {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            p += nl + 1;
            while (*p == ' ' || *p == '\t')
                p++;
            return p;
        }
        p = strstr(p, "\r\n");
    }
    return NULL;
}

static int header_has_token(const char *val, const char *token)
{
    /* comma-separated, case-insensitive */
    size_t tl = strlen(token);
    const char *end = strstr(val, "\r\n");
    const char *p = val;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == ',' || *p == '\t'))
            p++;
        const char *q = p;
        while (q < end && *q != ',' && *q != ' ' && *q != '\t')
            q++;
        if ((size_t)(q - p) == tl && strncasecmp(p, token, tl) == 0)
            return 1;
        p = q;
    }
    return 0;
}

static void feed(conn_t *c, const uint8_t *data, size_t n);

/* Returns the number of bytes of data that belong to the handshake
 * response; the rest (if any) are frames. Returns (size_t)-1 if the response
 * is incomplete (all bytes consumed). */
static void handshake_data(conn_t *c, const uint8_t *data, size_t n)
{
    if (!c->hs)
        c->hs = xrealloc(NULL, HS_MAX + 1);
    size_t room = HS_MAX - c->hs_len;
    size_t take = n < room ? n : room;
    memcpy(c->hs + c->hs_len, data, take);
    size_t old = c->hs_len;
    c->hs_len += take;
    c->hs[c->hs_len] = 0;
    char *end = strstr(c->hs + (old > 3 ? old - 3 : 0), "\r\n\r\n");
    if (!end) {
        if (memchr(c->hs + old, 0, take))
            die("connection %d: NUL byte in handshake response", c->idx);
        if (c->hs_len >= HS_MAX)
            die("connection %d: handshake response headers too large", c->idx);
        return;
    }
    size_t hdr_len = (size_t)(end - c->hs) + 4;
    c->hs[hdr_len - 2] = 0; /* keep the last header's CRLF, cut the blank line */
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
        char *eol = strstr(c->hs, "\r\n");
        if (eol)
            *eol = 0;
        die("connection %d: handshake failed, status line: %s", c->idx, c->hs);
    }
    const char *v = find_header(c->hs, "Sec-WebSocket-Accept");
    if (!v || strncmp(v, WS_ACCEPT, strlen(WS_ACCEPT)) != 0)
        die("connection %d: missing or wrong Sec-WebSocket-Accept", c->idx);
    v = find_header(c->hs, "Upgrade");
    if (!v || !header_has_token(v, "websocket"))
        die("connection %d: response lacks 'Upgrade: websocket'", c->idx);
    v = find_header(c->hs, "Connection");
    if (!v || !header_has_token(v, "upgrade"))
        die("connection %d: response lacks 'Connection: Upgrade'", c->idx);
    if (find_header(c->hs, "Sec-WebSocket-Extensions"))
        die("connection %d: server selected an extension that was not offered", c->idx);
    on_open(c);
    size_t extra = c->hs_len - hdr_len; /* bytes of this chunk past the headers */
    free(c->hs);
    c->hs = NULL;
    c->hs_len = 0;
    if (extra)
        feed(c, data + (take - extra), extra);
    if (take < n)
        feed(c, data + take, n - take);
}

/* compare a chunk of an echoed message (message offset off) */
static void verify_chunk(conn_t *c, uint64_t off, const uint8_t *d, size_t n)
{
    size_t S = cfg.size;
    size_t vh, ts;
    if (cfg.verify < 0 || (size_t)cfg.verify * 2 >= S) {
        vh = S;
        ts = S;
    } else {
        vh = (size_t)cfg.verify < seqlen ? seqlen : (size_t)cfg.verify;
        ts = S - (size_t)cfg.verify;
        if (ts < vh)
            ts = vh;
    }
    uint64_t a = off, b = off + n;
    /* head region [0, vh) */
    if (a < vh) {
        uint64_t e = b < vh ? b : vh;
        uint64_t i = a;
        if (i < seqlen) {
            uint8_t sb[8];
            seq_bytes(c->recvd, sb);
            for (; i < e && i < seqlen; i++)
                if (d[i - off] != sb[i])
                    die("connection %d: echoed message %llu has wrong sequence number "
                        "(out of order or corrupted) at byte %llu",
                        c->idx, (unsigned long long)c->recvd, (unsigned long long)i);
        }
        if (i < e && memcmp(d + (i - off), tmpl + i, (size_t)(e - i)) != 0)
            die("connection %d: echoed message %llu payload mismatch in bytes [%llu, %llu)",
                c->idx, (unsigned long long)c->recvd, (unsigned long long)i,
                (unsigned long long)e);
    }
    /* tail region [ts, S) */
    if (b > ts && ts < S) {
        uint64_t s = a > ts ? a : ts;
        if (memcmp(d + (s - off), tmpl + s, (size_t)(b - s)) != 0)
            die("connection %d: echoed message %llu payload mismatch in bytes [%llu, %llu)",
                c->idx, (unsigned long long)c->recvd, (unsigned long long)s,
                (unsigned long long)b);
    }
}

static void on_data(conn_t *c, const uint8_t *d, size_t n)
{
    if (cfg.mode == MODE_ECHO || cfg.mode == MODE_RELAY) {
        if (c->msg_len + n > cfg.size)
            die("connection %d: echoed message %llu is longer than the %zu bytes sent",
                c->idx, (unsigned long long)c->recvd, cfg.size);
        verify_chunk(c, c->msg_len, d, n);
    }
    c->msg_len += n;
}

static void on_message(conn_t *c)
{
    uint64_t t = now_ns();
    if (cfg.mode == MODE_ECHO) {
        if (c->inflight == 0)
            die("connection %d: received a message that was never sent", c->idx);
        if (c->msg_op != data_opcode)
            die("connection %d: echoed message %llu has opcode %d, sent %d", c->idx,
                (unsigned long long)c->recvd, c->msg_op, data_opcode);
        if (c->msg_len != cfg.size)
            die("connection %d: echoed message %llu has %llu bytes, sent %zu", c->idx,
                (unsigned long long)c->recvd, (unsigned long long)c->msg_len, cfg.size);
        h_record(&hist, t - c->ts[c->ts_head]);
        c->ts_head = (c->ts_head + 1) % cfg.inflight;
        c->inflight--;
        total_inflight--;
        c->recvd++;
        if (may_send())
            queue_message(c);
    } else if (cfg.mode == MODE_RELAY) {
        if (c->msg_op != data_opcode)
            die("connection %d: relayed message %llu has opcode %d, sent %d", c->idx,
                (unsigned long long)c->recvd, c->msg_op, data_opcode);
        if (c->msg_len != cfg.size)
            die("connection %d: relayed message %llu has %llu bytes, sent %zu", c->idx,
                (unsigned long long)c->recvd, (unsigned long long)c->msg_len, cfg.size);
        if (c->recvd >= conns[0].sent)
            die("connection %d: received a message that was never sent", c->idx);
        c->recvd++;
        if (c->idx == 0) {
            c->inflight--;
            total_inflight--;
            if (c->sent < relay_limit)
                queue_message(c);
        }
    } else {
        c->recvd++;
    }
    total_recv++;
    total_bytes += c->msg_len;
    t_last_recv = t;
    c->msg_op = 0;
    c->msg_len = 0;
}

static void on_control(conn_t *c)
{
    switch (c->f_op) {
    case 0x9: /* ping -> pong */
        queue_control(c, 0xA, c->ctl, (size_t)c->ctl_len);
        break;
    case 0xA:
        break;
    case 0x8: {
        if (c->ctl_len == 1)
            die("connection %d: close frame with 1-byte payload", c->idx);
        int code = c->ctl_len >= 2 ? (c->ctl[0] << 8 | c->ctl[1]) : 1005;
        if (c->state == ST_CLOSE_SENT) {
            if (code != 1000 && code != 1005)
                die("connection %d: server answered our close 1000 with close code %d",
                    c->idx, code);
            c->state = ST_WAIT_EOF;
            c->deadline = now_ns() + timeout_ns;
        } else {
            char reason[126];
            int rl = c->ctl_len > 2 ? c->ctl_len - 2 : 0;
            memcpy(reason, c->ctl + 2, (size_t)rl);
            reason[rl] = 0;
            die("connection %d: server closed the connection unexpectedly (state %s, "
                "close code %d, reason '%s')",
                c->idx, st_name[c->state], code, reason);
        }
        c->got_close = 1;
        break;
    }
    }
}

/* streaming frame parser */
static void feed(conn_t *c, const uint8_t *data, size_t n)
{
    while (n > 0) {
        if (c->got_close)
            die("connection %d: data received after the close frame", c->idx);
        if (!c->in_payload) {
            /* accumulate header */
            if (c->hdr_len < 2) {
                size_t take = 2 - (size_t)c->hdr_len;
                if (take > n)
                    take = n;
                memcpy(c->hdr + c->hdr_len, data, take);
                c->hdr_len += (int)take;
                data += take;
                n -= take;
                if (c->hdr_len < 2)
                    return;
            }
            int len7 = c->hdr[1] & 0x7f;
            int masked = c->hdr[1] & 0x80;
            int need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0);
            if (c->hdr_len < need) {
                size_t take = (size_t)(need - c->hdr_len);
                if (take > n)
                    take = n;
                memcpy(c->hdr + c->hdr_len, data, take);
                c->hdr_len += (int)take;
                data += take;
                n -= take;
                if (c->hdr_len < need)
                    return;
            }
            int fin = c->hdr[0] & 0x80;
            int rsv = c->hdr[0] & 0x70;
            int op = c->hdr[0] & 0x0f;
            uint64_t len = (uint64_t)len7;
            if (len7 == 126)
                len = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
            else if (len7 == 127) {
                len = 0;
                for (int i = 0; i < 8; i++)
                    len = len << 8 | c->hdr[2 + i];
                if (len >> 63)
                    die("connection %d: frame length has the most significant bit set", c->idx);
            }
            c->hdr_len = 0;
            if (rsv)
                die("connection %d: frame with RSV bits 0x%x set (no extension negotiated)",
                    c->idx, rsv >> 4);
            if (masked)
                die("connection %d: server sent a masked frame", c->idx);
            if (op >= 0x8) {
                if (op != 0x8 && op != 0x9 && op != 0xA)
                    die("connection %d: reserved control opcode 0x%x", c->idx, op);
                if (!fin)
                    die("connection %d: fragmented control frame", c->idx);
                if (len > 125)
                    die("connection %d: control frame payload of %llu bytes (> 125)", c->idx,
                        (unsigned long long)len);
                c->ctl_len = 0;
            } else if (op == 0x0) {
                if (!c->msg_op)
                    die("connection %d: continuation frame without a message in progress",
                        c->idx);
            } else if (op == 0x1 || op == 0x2) {
                if (c->msg_op)
                    die("connection %d: new data frame while a fragmented message is in "
                        "progress",
                        c->idx);
                if (c->state != ST_OPEN && c->state != ST_CLOSE_SENT)
                    die("connection %d: data frame in state %s", c->idx, st_name[c->state]);
                c->msg_op = op;
                c->msg_len = 0;
            } else {
                die("connection %d: reserved data opcode 0x%x", c->idx, op);
            }
            c->f_op = op;
            c->f_fin = fin;
            c->pay_left = len;
            c->in_payload = 1;
        }
        if (c->pay_left) {
            size_t take = c->pay_left < n ? (size_t)c->pay_left : n;
            if (c->f_op >= 0x8) {
                memcpy(c->ctl + c->ctl_len, data, take);
                c->ctl_len += (int)take;
            } else {
                on_data(c, data, take);
            }
            c->pay_left -= take;
            data += take;
            n -= take;
        }
        if (c->pay_left == 0) {
            c->in_payload = 0;
            if (c->f_op >= 0x8)
                on_control(c);
            else if (c->f_fin)
                on_message(c);
        }
    }
}

/* returns 1 if the connection was closed (and possibly restarted) */
static int do_read(conn_t *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, RBUF_SIZE, 0);
        if (n > 0) {
            c->deadline = now_ns() + timeout_ns;
            if (c->state == ST_HS_RECV)
                handshake_data(c, rbuf, (size_t)n);
            else if (c->state == ST_CONNECTING)
                die("connection %d: data before connect completed", c->idx);
            else
                feed(c, rbuf, (size_t)n);
            if ((size_t)n < RBUF_SIZE)
                return 0;
        } else if (n == 0) {
            if (c->state == ST_WAIT_EOF && !c->in_payload && c->hdr_len == 0) {
                on_closed(c);
                return 1;
            }
            die("connection %d: server closed the TCP connection unexpectedly (state %s%s)",
                c->idx, st_name[c->state],
                c->state == ST_CLOSE_SENT ? ", no close frame received" : "");
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return 0;
        } else {
            die("connection %d: recv failed in state %s: %s", c->idx, st_name[c->state],
                strerror(errno));
        }
    }
}

static void handle_event(conn_t *c, uint32_t events)
{
    if (c->state == ST_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        on_connected(c);
        if (events & EPOLLIN) {
            if (do_read(c))
                return;
        }
        flush(c);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (do_read(c))
            return;
    }
    flush(c);
}

/* is the connection waiting for something from the server? */
static int is_waiting(const conn_t *c)
{
    switch (c->state) {
    case ST_CONNECTING:
    case ST_HS_RECV:
    case ST_CLOSE_SENT:
    case ST_WAIT_EOF:
        return 1;
    case ST_OPEN:
        if (cfg.mode == MODE_RELAY && phase == P_RUN &&
            (relay_stage == R_WARM || relay_stage == R_MEASURE) && c->recvd < relay_target)
            return 1;
        return c->inflight > 0 || c->wb.off < c->wb.len;
    default:
        return 0;
    }
}

static void check_timeouts(uint64_t t)
{
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (is_waiting(c) && t > c->deadline)
            die("connection %d: no progress for %.1f s in state %s (%d messages in flight, "
                "%zu bytes unsent)",
                c->idx, cfg.timeout, st_name[c->state], c->inflight, c->wb.len - c->wb.off);
    }
}

/* ------------------------------------------------------------------ */
/* main                                                                */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loadgen MODE --port P [options]\n"
            "modes: echo | handshake | broadcast | idle | relay\n"
            "  --host H          server address (default 127.0.0.1)\n"
            "  --port P          server port (required)\n"
            "  --path PATH       request path (default /)\n"
            "  -c, --conns C     concurrent connections (default 1)\n"
            "  -k, --inflight K  echo: messages in flight per connection (default 1)\n"
            "  -s, --size S      echo: message size in bytes (default 32)\n"
            "  --text|--binary   echo: message type (default text, ASCII payload)\n"
            "  -d, --duration D  seconds to run (default 5 unless -n is given)\n"
            "  -n, --count N     echo/broadcast: total messages; handshake: iterations\n"
            "  --verify V        bytes verified at head and tail of each echo (default 64,\n"
            "                    -1 = whole payload)\n"
            "  --timeout T       seconds without progress before failing (default 10)\n"
            "  --seed X          random seed (default: time-based)\n"
            "  --notify          print 'open' on stderr when all connections are open and\n"
            "                    'done' when all -n broadcast messages have arrived\n"
            "  --concurrency K   at most K connections opening at once (default: all at\n"
            "                    once; idle: 100)\n"
            "  --warmup W        relay: warm-up messages, not measured (default 0)\n"
            "  --sleep-us U      sleep U µs after each batch of epoll events (default: 1000\n"
            "                    in relay mode, 0 otherwise; applies to relay mode only)\n"
            "relay: -c clients, connection 0 sends --warmup + -n messages of -s bytes with\n"
            "-k in flight; every connection must receive every message (see the header).\n"
            "idle: holds the connections for -d seconds (default 5), or until a line or\n"
            "EOF on stdin when stdin is a pipe.\n"
            "Prints one line of JSON on stdout; exits 1 on connection/protocol errors.\n");
}

static double parse_double(const char *s, const char *what)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end)
        usage_error("invalid %s: '%s'", what, s);
    return v;
}

static long long parse_ll(const char *s, const char *what)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s)
        usage_error("invalid %s: '%s'", what, s);
    /* allow k/K, m/M suffix (binary multiples) */
    if (*end == 'k' || *end == 'K') {
        v *= 1024;
        end++;
    } else if (*end == 'm' || *end == 'M') {
        v *= 1024 * 1024;
        end++;
    }
    if (*end)
        usage_error("invalid %s: '%s'", what, s);
    return v;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"mode", required_argument, 0, 'm'},  {"host", required_argument, 0, 'H'},
        {"port", required_argument, 0, 'p'},  {"path", required_argument, 0, 'P'},
        {"conns", required_argument, 0, 'c'}, {"inflight", required_argument, 0, 'k'},
        {"size", required_argument, 0, 's'},  {"text", no_argument, 0, 't'},
        {"binary", no_argument, 0, 'b'},      {"duration", required_argument, 0, 'd'},
        {"count", required_argument, 0, 'n'}, {"messages", required_argument, 0, 'n'},
        {"iterations", required_argument, 0, 'n'},
        {"verify", required_argument, 0, 'V'}, {"timeout", required_argument, 0, 'T'},
        {"seed", required_argument, 0, 'S'},  {"help", no_argument, 0, 'h'},
        {"notify", no_argument, 0, 'N'},      {"concurrency", required_argument, 0, 'C'},
        {"warmup", required_argument, 0, 'W'}, {"sleep-us", required_argument, 0, 'U'},
        {0, 0, 0, 0},
    };
    const char *mode = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "m:c:k:s:d:n:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'm': mode = optarg; break;
        case 'H': cfg.host = optarg; break;
        case 'p': cfg.port = (int)parse_ll(optarg, "port"); break;
        case 'P': cfg.path = optarg; break;
        case 'c': cfg.conns = (int)parse_ll(optarg, "connection count"); break;
        case 'k': cfg.inflight = (int)parse_ll(optarg, "in-flight count"); break;
        case 's': {
            long long v = parse_ll(optarg, "size");
            if (v < 0)
                usage_error("size must be >= 0");
            cfg.size = (size_t)v;
            break;
        }
        case 't': cfg.binary = 0; break;
        case 'b': cfg.binary = 1; break;
        case 'd': cfg.duration = parse_double(optarg, "duration"); break;
        case 'n': {
            long long v = parse_ll(optarg, "count");
            if (v < 0)
                usage_error("count must be >= 0");
            cfg.count = (uint64_t)v;
            break;
        }
        case 'V': cfg.verify = (long)parse_ll(optarg, "verify"); break;
        case 'T': cfg.timeout = parse_double(optarg, "timeout"); break;
        case 'S': cfg.seed = (uint64_t)parse_ll(optarg, "seed"); break;
        case 'N': cfg.notify = 1; break;
        case 'C': cfg.concurrency = (int)parse_ll(optarg, "concurrency"); break;
        case 'W': {
            long long v = parse_ll(optarg, "warm-up count");
            if (v < 0)
                usage_error("--warmup must be >= 0");
            cfg.warmup = (uint64_t)v;
            break;
        }
        case 'U': cfg.sleep_us = (long)parse_ll(optarg, "sleep"); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!mode && optind < argc)
        mode = argv[optind++];
    if (optind < argc)
        usage_error("unexpected argument '%s'", argv[optind]);
    if (!mode)
        usage_error("no mode given");
    if (!strcmp(mode, "echo"))
        cfg.mode = MODE_ECHO;
    else if (!strcmp(mode, "handshake"))
        cfg.mode = MODE_HANDSHAKE;
    else if (!strcmp(mode, "broadcast"))
        cfg.mode = MODE_BROADCAST;
    else if (!strcmp(mode, "idle"))
        cfg.mode = MODE_IDLE;
    else if (!strcmp(mode, "relay"))
        cfg.mode = MODE_RELAY;
    else
        usage_error("unknown mode '%s'", mode);
    if (cfg.port <= 0 || cfg.port > 65535)
        usage_error("--port is required (1-65535)");
    if (cfg.conns < 1)
        usage_error("--conns must be >= 1");
    if (cfg.inflight < 1)
        usage_error("--inflight must be >= 1");
    if (cfg.timeout <= 0)
        usage_error("--timeout must be > 0");
    if (cfg.duration < 0)
        usage_error("--duration must be >= 0");
    if (cfg.mode == MODE_HANDSHAKE && cfg.count == 0 && cfg.duration == 0)
        cfg.count = 1000;
    if (cfg.mode == MODE_BROADCAST && cfg.duration == 0)
        cfg.duration = 10;
    if (cfg.mode == MODE_RELAY) {
        if (cfg.count == 0)
            cfg.count = 1000;
        cfg.duration = 0; /* runs until every connection has every message */
        if (cfg.sleep_us < 0)
            cfg.sleep_us = 1000;
    }
    if (cfg.sleep_us < 0)
        cfg.sleep_us = 0;
    if (cfg.duration == 0 && cfg.count == 0)
        cfg.duration = 5;
    if (cfg.mode == MODE_HANDSHAKE && cfg.count == 0)
        cfg.count = UINT64_MAX;
    if (cfg.mode == MODE_HANDSHAKE && (uint64_t)cfg.conns > cfg.count)
        cfg.conns = (int)cfg.count;
    timeout_ns = (uint64_t)(cfg.timeout * 1e9);
    if (cfg.concurrency < 0)
        cfg.concurrency = cfg.mode == MODE_IDLE ? 100 : 0;

    /* many connections: raise the soft limit on open files to the hard one */
    {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
    }

    /* address */
    memset(&srv_addr, 0, sizeof srv_addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&srv_addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&srv_addr;
    const char *h = cfg.host;
    if (!strcmp(h, "localhost"))
        h = "127.0.0.1";
    if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg.port);
        srv_addrlen = sizeof *a4;
    } else if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)cfg.port);
        srv_addrlen = sizeof *a6;
    } else {
        usage_error("--host must be a numeric IPv4/IPv6 address or localhost");
    }
    const char *hostfmt = srv_addr.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d";
    char hosthdr[128];
    snprintf(hosthdr, sizeof hosthdr, hostfmt, cfg.host, cfg.port);
    int rl = snprintf(hs_request, sizeof hs_request,
                      "GET %s HTTP/1.1\r\n"
                      "Host: %s\r\n"
                      "Upgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Key: " WS_KEY "\r\n"
                      "Sec-WebSocket-Version: 13\r\n"
                      "User-Agent: tether-loadgen\r\n"
                      "\r\n",
                      cfg.path, hosthdr);
    if (rl < 0 || (size_t)rl >= sizeof hs_request)
        usage_error("--path too long");
    hs_request_len = (size_t)rl;

    signal(SIGPIPE, SIG_IGN);
    rng_state = cfg.seed ? cfg.seed : (now_ns() ^ ((uint64_t)getpid() << 32));
    if (!rng_state)
        rng_state = 1;
    for (int i = 0; i < 8; i++)
        xorshift64();

    /* message template */
    data_opcode = cfg.binary ? 0x2 : 0x1;
    tmpl = xrealloc(NULL, cfg.size ? cfg.size : 1);
    for (size_t i = 0; i < cfg.size; i++)
        tmpl[i] = cfg.binary ? (uint8_t)xorshift64() : (uint8_t)('a' + (i * 7 + i / 26) % 26);
    seqlen = cfg.size < 8 ? cfg.size : 8;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));
    nconns = cfg.conns;
    conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns)
        die("out of memory");
    for (int i = 0; i < nconns; i++) {
        conns[i].idx = i;
        conns[i].fd = -1;
        if (cfg.mode == MODE_ECHO || (cfg.mode == MODE_RELAY && i == 0))
            conns[i].ts = xrealloc(NULL, sizeof(uint64_t) * (size_t)cfg.inflight);
    }

    uint64_t t0 = now_ns();
    uint64_t run_ns = (uint64_t)(cfg.duration * 1e9);
    uint64_t deadline = 0;
    if (cfg.mode == MODE_HANDSHAKE) {
        /* handshake mode measures from the very first connect */
        phase = P_RUN;
        t_start = t0;
        deadline = run_ns ? t0 + run_ns : 0;
    }
    if (cfg.mode == MODE_HANDSHAKE || cfg.concurrency <= 0 || cfg.concurrency >= nconns) {
        for (int i = 0; i < nconns; i++)
            start_connection(&conns[i]);
        n_started = nconns;
    } else {
        for (int i = 0; i < cfg.concurrency; i++)
            start_connection(&conns[i]);
        n_started = cfg.concurrency;
    }
    if (cfg.mode == MODE_IDLE || (cfg.mode == MODE_RELAY && cfg.notify)) {
        struct stat st;
        if (fstat(0, &st) == 0 && S_ISFIFO(st.st_mode)) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &stdin_marker};
            if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) == 0)
                stdin_watched = 1;
        }
        relay_gated = cfg.mode == MODE_RELAY && stdin_watched;
    }

    struct epoll_event evs[256];
    uint64_t last_check = t0;
    for (;;) {
        uint64_t t = now_ns();
        int tmo = 100;
        if (deadline && phase == P_RUN) {
            uint64_t left = deadline > t ? deadline - t : 0;
            int ms = (int)((left + 999999) / 1000000);
            if (ms < tmo)
                tmo = ms;
        }
        int n = epoll_wait(epfd, evs, 256, tmo);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &stdin_marker && cfg.mode == MODE_RELAY) {
                /* relay mode: count lines; EOF releases every wait */
                char tmp[256];
                ssize_t r = read(0, tmp, sizeof tmp);
                if (r <= 0) {
                    stdin_lines += 1000;
                    epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
                    stdin_watched = 0;
                } else {
                    for (ssize_t j = 0; j < r; j++)
                        stdin_lines += tmp[j] == '\n';
                }
                continue;
            }
            if (evs[i].data.ptr == &stdin_marker) {
                /* idle mode: any input or EOF on stdin ends the hold */
                char tmp[256];
                (void)!read(0, tmp, sizeof tmp);
                epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
                stdin_watched = 0;
                if (phase == P_RUN)
                    deadline = now_ns(); /* checked below */
                else
                    stdin_eof_early = 1;
                continue;
            }
            handle_event((conn_t *)evs[i].data.ptr, evs[i].events);
        }
        t = now_ns();
        if (cfg.mode == MODE_RELAY && n > 0 && phase == P_RUN && cfg.sleep_us > 0 &&
            (relay_stage == R_WARM || relay_stage == R_MEASURE)) {
            /* let the messages pile up so that one recv() takes several */
            struct timespec ts = {.tv_sec = cfg.sleep_us / 1000000,
                                  .tv_nsec = (cfg.sleep_us % 1000000) * 1000};
            nanosleep(&ts, NULL);
        }

        if (cfg.mode == MODE_RELAY) {
            if (phase == P_CONNECT && n_open == nconns) {
                phase = P_RUN;
                t_start = t_last_recv = t_all_open = now_ns();
                notify("open");
                relay_stage = R_WARM;
                relay_limit = relay_target = cfg.warmup;
            }
            if (phase == P_RUN) {
                /* stages: warm-up, wait for "go", measured, wait for "stop" */
                if (relay_stage == R_WARM && total_recv >= (uint64_t)nconns * cfg.warmup) {
                    relay_stage = R_WAIT_GO;
                    notify("warm");
                }
                if (relay_stage == R_WAIT_GO && (!relay_gated || stdin_lines >= 1)) {
                    relay_stage = R_MEASURE;
                    cpu_now(r_cpu0);
                    r_t0 = now_ns();
                    relay_limit = relay_target = cfg.warmup + cfg.count;
                    for (int i = 0; i < nconns; i++)
                        conns[i].deadline = r_t0 + timeout_ns;
                    conn_t *s = &conns[0];
                    while (s->inflight < cfg.inflight && s->sent < relay_limit)
                        queue_message(s);
                    flush(s);
                }
                if (relay_stage == R_WARM && conns[0].sent == 0 && cfg.warmup) {
                    conn_t *s = &conns[0];
                    while (s->inflight < cfg.inflight && s->sent < relay_limit)
                        queue_message(s);
                    flush(s);
                }
                if (relay_stage == R_MEASURE &&
                    total_recv >= (uint64_t)nconns * (cfg.warmup + cfg.count)) {
                    r_t1 = t_last_recv;
                    cpu_now(r_cpu1);
                    relay_stage = R_WAIT_STOP;
                    notify("done");
                }
                if (relay_stage == R_WAIT_STOP && (!relay_gated || stdin_lines >= 2)) {
                    relay_stage = R_FINISHED;
                    t_stop = now_ns();
                    phase = P_CLOSE;
                    close_all(conns, nconns);
                }
            }
            if (phase == P_CLOSE && n_closed == nconns)
                break;
        } else if (cfg.mode == MODE_HANDSHAKE) {
            if (phase == P_RUN && deadline && t >= deadline)
                phase = P_DRAIN; /* start no new iterations */
            if (n_active == 0) {
                t_stop = t;
                break;
            }
        } else {
            if (phase == P_CONNECT && n_open == nconns) {
                phase = P_RUN;
                t_start = t_last_recv = t_all_open = now_ns();
                deadline = run_ns ? t_start + run_ns : 0;
                if (stdin_eof_early)
                    deadline = t_start;
                notify("open");
                if (cfg.mode == MODE_ECHO) {
                    for (int i = 0; i < nconns; i++) {
                        for (int k = 0; k < cfg.inflight && may_send(); k++)
                            queue_message(&conns[i]);
                        conns[i].deadline = now_ns() + timeout_ns;
                        flush(&conns[i]);
                    }
                }
            }
            if (phase == P_RUN &&
                ((deadline && t >= deadline) || (cfg.count && cfg.mode == MODE_ECHO &&
                                                  total_sent >= cfg.count) ||
                 (cfg.count && cfg.mode == MODE_BROADCAST && total_recv >= cfg.count))) {
                phase = P_DRAIN;
                t_stop = t;
                if (cfg.mode == MODE_BROADCAST && cfg.count && total_recv >= cfg.count)
                    notify("done");
            }
            if (phase == P_DRAIN && total_inflight == 0) {
                if (cfg.mode == MODE_BROADCAST || cfg.mode == MODE_IDLE)
                    t_last_recv = t_stop;
                phase = P_CLOSE;
                close_all(conns, nconns);
            }
            if (phase == P_CLOSE && n_closed == nconns)
                break;
        }
        if (t - last_check > 100000000ull) {
            check_timeouts(t);
            last_check = t;
        }
    }
    uint64_t t_end = now_ns();

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    double cpu_sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    double cpu = cpu_user + cpu_sys;

    double elapsed = (double)(t_last_recv - t_start) / 1e9;
    if (elapsed <= 0)
        elapsed = 1e-9;
    printf("{\"mode\":\"%s\",\"conns\":%d", mode_name[cfg.mode], cfg.conns);
    if (cfg.mode == MODE_ECHO) {
        printf(",\"inflight\":%d,\"size\":%zu,\"binary\":%s,\"messages\":%llu,\"bytes\":%llu"
               ",\"elapsed_s\":%.6f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f",
               cfg.inflight, cfg.size, cfg.binary ? "true" : "false",
               (unsigned long long)total_recv, (unsigned long long)total_bytes, elapsed,
               (double)total_recv / elapsed, (double)total_bytes / 1e6 / elapsed);
    } else if (cfg.mode == MODE_HANDSHAKE) {
        elapsed = (double)(t_stop - t_start) / 1e9;
        if (elapsed <= 0)
            elapsed = 1e-9;
        printf(",\"handshakes\":%llu,\"elapsed_s\":%.6f,\"handshakes_per_s\":%.1f",
               (unsigned long long)hs_done, elapsed, (double)hs_done / elapsed);
    } else if (cfg.mode == MODE_IDLE) {
        printf(",\"open_s\":%.6f,\"held_s\":%.6f", (double)(t_all_open - t0) / 1e9,
               (double)(t_stop - t_all_open) / 1e9);
    } else if (cfg.mode == MODE_RELAY) {
        /* the measured messages only: from "go" to the last delivery */
        uint64_t deliveries = (uint64_t)nconns * cfg.count;
        elapsed = (double)(r_t1 - r_t0) / 1e9;
        if (elapsed <= 0)
            elapsed = 1e-9;
        cpu_user = r_cpu1[0] - r_cpu0[0];
        cpu_sys = r_cpu1[1] - r_cpu0[1];
        cpu = cpu_user + cpu_sys;
        printf(",\"inflight\":%d,\"size\":%zu,\"warmup\":%llu,\"messages\":%llu"
               ",\"deliveries\":%llu,\"received_total\":%llu,\"sleep_us\":%ld"
               ",\"open_s\":%.6f,\"elapsed_s\":%.6f,\"deliveries_per_s\":%.1f",
               cfg.inflight, cfg.size, (unsigned long long)cfg.warmup,
               (unsigned long long)cfg.count, (unsigned long long)deliveries,
               (unsigned long long)total_recv, cfg.sleep_us, (double)(t_all_open - t0) / 1e9,
               elapsed, (double)deliveries / elapsed);
    } else {
        printf(",\"messages\":%llu,\"bytes\":%llu,\"elapsed_s\":%.6f,\"msgs_per_s\":%.1f",
               (unsigned long long)total_recv, (unsigned long long)total_bytes, elapsed,
               (double)total_recv / elapsed);
    }
    if (cfg.mode == MODE_ECHO || cfg.mode == MODE_HANDSHAKE) {
        printf(",\"lat_samples\":%llu,\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f"
               ",\"p999_us\":%.2f,\"min_us\":%.2f,\"max_us\":%.2f,\"mean_us\":%.2f",
               (unsigned long long)hist.n, h_percentile(&hist, 0.50) / 1e3,
               h_percentile(&hist, 0.90) / 1e3, h_percentile(&hist, 0.99) / 1e3,
               h_percentile(&hist, 0.999) / 1e3, (double)hist.min / 1e3,
               (double)hist.max / 1e3, hist.n ? hist.sum / (double)hist.n / 1e3 : 0.0);
    }
    uint64_t units = cfg.mode == MODE_HANDSHAKE ? hs_done
                     : cfg.mode == MODE_RELAY   ? (uint64_t)nconns * cfg.count
                                                : total_recv;
    printf(",\"wall_s\":%.6f,\"client_cpu_s\":%.6f,\"client_user_s\":%.6f,"
           "\"client_sys_s\":%.6f,\"client_cpu_us_per_op\":%.3f}\n",
           (double)(t_end - t0) / 1e9, cpu, cpu_user, cpu_sys,
           units ? cpu * 1e6 / (double)units : 0.0);
    fflush(stdout);
    return 0;
}
