/*
 * minimal_server.c - the "minimal C server" floor for bench/peers.py.
 *
 * A single-threaded, level-triggered epoll WebSocket (RFC 6455) server with no
 * dependencies beyond libc, doing only what peers.py's scenarios need:
 *
 *   echo       echo every data frame back unmasked with the same opcode and FIN bit
 *              (text, binary and continuation frames; payloads up to 2,000,000 bytes);
 *              ping -> pong; close -> close with the same code, then close the socket.
 *   broadcast  keep the connections; on SIGUSR2, once --clients K are open, send
 *              --messages N texts of --size S bytes to every one of them, --burst B per
 *              turn of the loop (one send() per connection per burst), waiting while some
 *              connection has more than 256 KiB unsent; then print "sent N to K".
 *   relay      every data frame a client sends goes to every open connection, the sender
 *              included (unmasked, same opcode and FIN bit): the frames of one read are
 *              staged together and sent with one send() per connection (what the kernel
 *              does not take is queued, as in echo).
 *
 * Usage: minimal_server {echo|broadcast|relay} HOST PORT [--clients K] [--messages N]
 *                       [--size S] [--burst B]       (as in _peer_common.py)
 * Build: gcc -O2 -Wall -Wextra -o minimal_server bench/servers/minimal_server.c
 *
 * No extensions (compression) are negotiated, text is not checked for UTF-8 and
 * fragment order is not validated: it is bench tooling, not a conforming server.
 * Output is staged in one static buffer and sent at the end of each read; only what
 * the kernel does not take is copied into a per-connection buffer (EPOLLOUT until sent).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PAYLOAD 2000000
#define HIGH_WATER (256 * 1024)  /* broadcast: wait while a connection has more unsent */
#define READ_PAUSE (4 << 20)     /* echo: stop reading while this much is unsent */
#define MAX_REQUEST 8192         /* bytes of HTTP request headers */
#define RBUF_SIZE (256 * 1024)
#define WBUF_SIZE (4 << 20)      /* > one frame of MAX_PAYLOAD + header */

enum { S_HTTP, S_OPEN, S_CLOSING };

typedef struct conn {
    int fd, state, idx, dead; /* idx: position in live[] */
    uint32_t events;          /* registered with epoll */
    uint8_t *in;              /* unparsed input (an incomplete request or frame) */
    size_t in_len, in_cap, need;
    uint8_t *out;             /* output the kernel has not taken yet */
    size_t out_off, out_len, out_cap;
} conn;

static int echo_mode, relay_mode, ep;
static long opt_clients = 1000, opt_messages = 300, opt_size = 32, opt_burst = 10;
static conn **live;
static int n_live, live_cap, n_open;
static uint8_t rbuf[RBUF_SIZE], wbuf[WBUF_SIZE];
static size_t wlen;
static int listen_tag, signal_tag; /* their addresses tag epoll events */
static uint8_t *relay_buf;         /* relay: the frames of this read, for everyone */
static size_t relay_len, relay_cap;

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        perror("minimal_server: realloc");
        exit(1);
    }
    return p;
}

/* ------------------------------------------------------------------ */
/* SHA-1 and base64, for Sec-WebSocket-Accept                          */

static uint32_t rol(uint32_t x, int n) { return x << n | x >> (32 - n); }

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) /* len <= 200 */
{
    uint8_t buf[256] = {0};
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t nblocks = (len + 8) / 64 + 1;
    uint64_t bits = (uint64_t)len * 8;
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    for (int i = 0; i < 8; i++)
        buf[nblocks * 64 - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t b = 0; b < nblocks; b++) {
        const uint8_t *p = buf + 64 * b;
        uint32_t w[80], a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
                   (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
        for (int i = 16; i < 80; i++)
            w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20)
                f = (bb & c) | (~bb & d), k = 0x5A827999;
            else if (i < 40)
                f = bb ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60)
                f = (bb & c) | (bb & d) | (c & d), k = 0x8F1BBCDC;
            else
                f = bb ^ c ^ d, k = 0xCA62C1D6;
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol(bb, 30), bb = a, a = t;
        }
        h[0] += a, h[1] += bb, h[2] += c, h[3] += d, h[4] += e;
    }
    for (int i = 0; i < 20; i++)
        out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const uint8_t *in, size_t n, char *out) /* out: 4*ceil(n/3)+1 bytes */
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        *out++ = tab[v >> 18 & 63];
        *out++ = tab[v >> 12 & 63];
        *out++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *out++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *out = 0;
}

/* ------------------------------------------------------------------ */
/* connections and output                                              */

static void update_events(conn *c)
{
    uint32_t want = (c->out_len ? EPOLLOUT : 0) |
                    (c->state != S_CLOSING && c->out_len < READ_PAUSE ? EPOLLIN : 0);
    if (want != c->events) {
        struct epoll_event ev = {.events = want, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->events = want;
    }
}

static void conn_close(conn *c)
{
    if (c->state == S_OPEN)
        n_open--;
    close(c->fd); /* also removes it from the epoll set */
    live[c->idx] = live[--n_live];
    live[c->idx]->idx = c->idx;
    free(c->in);
    free(c->out);
    free(c);
}

/* Sends what the kernel takes now (if nothing is queued before it), queues the rest. */
static void send_or_queue(conn *c, const uint8_t *p, size_t n)
{
    if (c->dead || !n)
        return;
    if (!c->out_len) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            c->dead = 1;
            return;
        }
        if (w > 0)
            p += w, n -= (size_t)w;
        if (!n)
            return;
        c->out_off = 0;
    }
    if (c->out_off + c->out_len + n > c->out_cap) {
        if (c->out_off) { /* compact first */
            memmove(c->out, c->out + c->out_off, c->out_len);
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            c->out_cap = (c->out_len + n) * 2;
            c->out = xrealloc(c->out, c->out_cap);
        }
    }
    memcpy(c->out + c->out_off + c->out_len, p, n);
    c->out_len += n;
}

static void flush_out(conn *c) /* on EPOLLOUT */
{
    ssize_t w = send(c->fd, c->out + c->out_off, c->out_len, MSG_NOSIGNAL);
    if (w < 0) {
        if (errno != EAGAIN && errno != EINTR)
            c->dead = 1;
        return;
    }
    c->out_off += (size_t)w;
    c->out_len -= (size_t)w;
    if (!c->out_len) { /* an idle connection holds no buffer */
        free(c->out);
        c->out = NULL;
        c->out_off = c->out_cap = 0;
    }
}

/* Closes a connection that failed or finished closing, else updates its epoll events. */
static void settle(conn *c)
{
    if (c->dead || (c->state == S_CLOSING && !c->out_len))
        conn_close(c);
    else
        update_events(c);
}

/* ------------------------------------------------------------------ */
/* frames                                                              */

static size_t frame_header(uint8_t *h, uint8_t b0, uint64_t len) /* unmasked */
{
    h[0] = b0;
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        h[1] = 126, h[2] = (uint8_t)(len >> 8), h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

/* Appends a frame to wbuf (sending wbuf to c first if it is full); mask: NULL or 4 bytes. */
static void emit(conn *c, uint8_t b0, const uint8_t *mask, const uint8_t *src, size_t len)
{
    if (wlen + 10 + len > WBUF_SIZE) {
        send_or_queue(c, wbuf, wlen);
        wlen = 0;
    }
    uint8_t *dst = wbuf + wlen;
    dst += frame_header(dst, b0, len);
    wlen = (size_t)(dst - wbuf) + len;
    if (!mask) {
        if (len)
            memcpy(dst, src, len);
        return;
    }
    size_t i = 0;
    uint64_t m8;
    uint32_t m4;
    memcpy(&m4, mask, 4);
    m8 = (uint64_t)m4 << 32 | m4;
    for (; i + 8 <= len; i += 8) { /* a multiple of 4: the mask stays in phase */
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= m8;
        memcpy(dst + i, &v, 8);
    }
    for (; i < len; i++)
        dst[i] = src[i] ^ mask[i & 3];
}

static void fail(conn *c, int code) /* send a close frame with code, then close */
{
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    emit(c, 0x88, NULL, p, 2);
    if (c->state == S_OPEN)
        n_open--;
    c->state = S_CLOSING;
}

static const char *find_header(const char *req, const char *end, const char *name,
                               size_t *vlen)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(req, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, nl) != 0 || line[nl] != ':')
            continue;
        const char *v = line + nl + 1, *e = strstr(v, "\r\n");
        while (*v == ' ' || *v == '\t')
            v++;
        while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        *vlen = (size_t)(e - v);
        return v;
    }
    return NULL;
}

/* relay: appends an unmasked copy of a frame to relay_buf */
static void relay_frame(uint8_t b0, const uint8_t *mask, const uint8_t *src, size_t len)
{
    if (relay_len + 10 + len > relay_cap) {
        relay_cap = (relay_len + 10 + len) * 2;
        relay_buf = xrealloc(relay_buf, relay_cap);
    }
    uint8_t *dst = relay_buf + relay_len;
    dst += frame_header(dst, b0, len);
    relay_len = (size_t)(dst - relay_buf) + len;
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i] ^ mask[i & 3];
}

/* relay: sends relay_buf to every open connection but c (c gets it from its caller) */
static void relay_out(conn *c)
{
    for (int i = n_live - 1; i >= 0; i--) { /* backwards: settle() may swap-remove live[i] */
        conn *x = live[i];
        if (x != c && x->state == S_OPEN) {
            send_or_queue(x, relay_buf, relay_len);
            settle(x);
        }
    }
}

/* Returns the bytes of the request, 0 while it is incomplete. */
static size_t handshake(conn *c, uint8_t *p, size_t n)
{
    uint8_t *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) {
        if (n >= MAX_REQUEST)
            c->dead = 1;
        return 0;
    }
    end[2] = 0; /* keeps the last header's CRLF; p is ours (rbuf or c->in) */
    size_t klen;
    const char *key = find_header((char *)p, (char *)end, "Sec-WebSocket-Key", &klen);
    if (!key || klen == 0 || klen > 64) {
        static const char bad[] =
            "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        memcpy(wbuf + wlen, bad, sizeof bad - 1); /* the request comes first: wbuf is empty */
        wlen += sizeof bad - 1;
        c->state = S_CLOSING;
        return n;
    }
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    uint8_t kg[64 + sizeof guid], digest[20];
    char accept[29];
    memcpy(kg, key, klen);
    memcpy(kg + klen, guid, sizeof guid - 1);
    sha1(kg, klen + sizeof guid - 1, digest);
    base64(digest, 20, accept);
    wlen += (size_t)sprintf((char *)wbuf + wlen,
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                            accept);
    c->state = S_OPEN;
    n_open++;
    return (size_t)(end + 4 - p);
}

/* Consumes the request and every complete frame in p[0, n); returns the bytes used and
 * sets c->need to the size of the incomplete frame at the end, when its header is in. */
static size_t process(conn *c, uint8_t *p, size_t n)
{
    size_t used = 0;
    c->need = 0;
    if (c->state == S_HTTP && !(used = handshake(c, p, n)))
        return 0;
    while (c->state == S_OPEN && n - used >= 2) {
        uint8_t *f = p + used;
        size_t avail = n - used, hl = 6;
        uint64_t len = f[1] & 0x7f;
        hl += len == 126 ? 2 : len == 127 ? 8 : 0;
        if (avail < hl)
            break;
        if (len == 126)
            len = (uint64_t)f[2] << 8 | f[3];
        else if (len == 127) {
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | f[2 + i];
        }
        int op = f[0] & 0x0f, fin = f[0] & 0x80;
        if (!(f[1] & 0x80) || (f[0] & 0x70) || (op >= 8 && (!fin || len > 125)) ||
            (op > 2 && op < 8) || op > 10) {
            fail(c, 1002); /* unmasked, RSV bits, bad control frame, unknown opcode */
            break;
        }
        if (len > MAX_PAYLOAD) {
            fail(c, 1009);
            break;
        }
        if (avail < hl + len) {
            c->need = hl + (size_t)len;
            break;
        }
        const uint8_t *mask = f + hl - 4, *pl = f + hl;
        used += hl + (size_t)len;
        if (op <= 2) { /* data: echoed as is, relayed, or ignored (broadcast mode) */
            if (echo_mode)
                emit(c, f[0], mask, pl, (size_t)len);
            else if (relay_mode)
                relay_frame(f[0], mask, pl, (size_t)len);
        } else if (op == 9) {
            emit(c, 0x8A, mask, pl, (size_t)len);
        } else if (op == 8) { /* reply with the same code, or none */
            uint8_t code[2] = {0, 0};
            if (len >= 2)
                code[0] = pl[0] ^ mask[0], code[1] = pl[1] ^ mask[1];
            emit(c, 0x88, NULL, code, len >= 2 ? 2 : 0);
            n_open--;
            c->state = S_CLOSING;
        }
    }
    return used;
}

static void on_readable(conn *c)
{
    uint8_t *buf = rbuf;
    size_t room = RBUF_SIZE;
    if (c->in_len) { /* a partial request or frame: read into its buffer */
        if (c->in_cap - c->in_len < 4096) {
            c->in_cap = c->in_len + 65536;
            c->in = xrealloc(c->in, c->in_cap);
        }
        buf = c->in + c->in_len;
        room = c->in_cap - c->in_len;
    }
    ssize_t r = recv(c->fd, buf, room, 0);
    if (r <= 0) {
        if (r == 0 || (errno != EAGAIN && errno != EINTR))
            c->dead = 1;
        settle(c);
        return;
    }
    int fresh = buf == rbuf;
    uint8_t *data = fresh ? rbuf : c->in;
    size_t n = fresh ? (size_t)r : (c->in_len += (size_t)r);
    size_t used = process(c, data, n), rest = n - used;
    if (rest && c->state != S_CLOSING) { /* keep the incomplete part, room for all of it */
        size_t cap = c->need > rest ? c->need : rest + 4096;
        if (!fresh && used)
            memmove(c->in, c->in + used, rest);
        if (cap > c->in_cap) {
            c->in = xrealloc(c->in, cap);
            c->in_cap = cap;
        }
        if (fresh)
            memcpy(c->in, rbuf + used, rest);
        c->in_len = rest;
    } else if (c->in) {
        free(c->in);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
    }
    send_or_queue(c, wbuf, wlen);
    wlen = 0;
    if (relay_len) {
        relay_out(c);
        if (c->state == S_OPEN)
            send_or_queue(c, relay_buf, relay_len);
        relay_len = 0;
    }
    settle(c);
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                perror("minimal_server: accept");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = calloc(1, sizeof *c);
        if (!c)
            exit(1);
        c->fd = fd;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (n_live == live_cap) {
            live_cap = live_cap ? live_cap * 2 : 1024;
            live = xrealloc(live, (size_t)live_cap * sizeof *live);
        }
        c->idx = n_live;
        live[n_live++] = c;
    }
}

/* ------------------------------------------------------------------ */
/* broadcast                                                           */

static uint8_t *burst_frames; /* opt_burst copies of the message's frame */
static size_t frame_len;
static long bc_sent = -1;     /* messages sent so far; -1: no broadcast under way */

static void make_frames(void)
{
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    uint8_t h[10];
    size_t hl = frame_header(h, 0x81, (uint64_t)opt_size);
    frame_len = hl + (size_t)opt_size;
    burst_frames = xrealloc(NULL, frame_len * (size_t)opt_burst);
    for (long b = 0; b < opt_burst; b++) {
        uint8_t *f = burst_frames + frame_len * (size_t)b;
        memcpy(f, h, hl);
        for (long i = 0; i < opt_size; i++)
            f[hl + (size_t)i] = (uint8_t)digits[i % 36];
    }
}

/* One turn of a broadcast; returns the epoll_wait timeout until the next one. */
static int broadcast_turn(void)
{
    if (bc_sent == 0 && n_open < opt_clients)
        return 10; /* not started yet: wait for the clients */
    for (int i = 0; i < n_live; i++)
        if (live[i]->out_len > HIGH_WATER)
            return -1; /* EPOLLOUT events will come */
    long nb = opt_messages - bc_sent < opt_burst ? opt_messages - bc_sent : opt_burst;
    for (int i = n_live - 1; i >= 0; i--) { /* backwards: settle() may swap-remove live[i] */
        conn *c = live[i];
        if (c->state == S_OPEN) {
            send_or_queue(c, burst_frames, frame_len * (size_t)nb);
            settle(c);
        }
    }
    bc_sent += nb;
    if (bc_sent < opt_messages)
        return 0;
    printf("sent %ld to %d\n", opt_messages, n_open);
    fflush(stdout);
    bc_sent = -1;
    return -1;
}

/* ------------------------------------------------------------------ */
/* main                                                                */

static void usage(void)
{
    fputs("usage: minimal_server {echo|broadcast|relay} HOST PORT [--clients K] [--messages N] "
          "[--size S] [--burst B]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[1], "echo") != 0 && strcmp(argv[1], "broadcast") != 0 &&
                     strcmp(argv[1], "relay") != 0))
        usage();
    echo_mode = strcmp(argv[1], "echo") == 0;
    relay_mode = strcmp(argv[1], "relay") == 0;
    for (int i = 4; i < argc; i += 2) {
        long *opt = !strcmp(argv[i], "--clients")    ? &opt_clients
                    : !strcmp(argv[i], "--messages") ? &opt_messages
                    : !strcmp(argv[i], "--size")     ? &opt_size
                    : !strcmp(argv[i], "--burst")    ? &opt_burst
                                                     : NULL;
        if (!opt || i + 1 >= argc)
            usage();
        *opt = strtol(argv[i + 1], NULL, 10);
    }
    if (opt_size < 0 || opt_size > MAX_PAYLOAD || opt_burst < 1 || opt_messages < 0)
        usage();

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai;
    int err = getaddrinfo(argv[2], argv[3], &hints, &ai);
    if (err) {
        fprintf(stderr, "minimal_server: %s: %s\n", argv[2], gai_strerror(err));
        return 1;
    }
    int lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(lfd, 1024) < 0) {
        perror("minimal_server: listen");
        return 1;
    }
    freeaddrinfo(ai);

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGUSR2);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);

    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_tag};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.ptr = &signal_tag;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    make_frames();
    printf("c-minimal %s server on %s:%s\n", argv[1], argv[2], argv[3]);
    fflush(stdout);

    struct epoll_event evs[256];
    int timeout = -1;
    for (;;) {
        int n = epoll_wait(ep, evs, 256, timeout);
        if (n < 0 && errno != EINTR) {
            perror("minimal_server: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            void *tag = evs[i].data.ptr;
            if (tag == &listen_tag) {
                on_accept(lfd);
            } else if (tag == &signal_tag) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == sizeof si) {
                    if (si.ssi_signo != SIGUSR2)
                        return 0; /* SIGINT, SIGTERM */
                    if (bc_sent < 0 && !echo_mode && !relay_mode)
                        bc_sent = 0; /* a SIGUSR2 during a broadcast is ignored */
                }
            } else {
                conn *c = tag;
                uint32_t e = evs[i].events;
                if (e & EPOLLERR) {
                    c->dead = 1;
                    settle(c);
                } else if (e & EPOLLOUT) {
                    flush_out(c); /* reads wait for the next turn */
                    settle(c);
                } else if (e & (EPOLLIN | EPOLLHUP)) {
                    on_readable(c);
                }
            }
        }
        timeout = bc_sent >= 0 ? broadcast_turn() : -1;
    }
}
