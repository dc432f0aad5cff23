/*
 * echo_floor.c - a minimal AudioSocket echo server in C: the reference floor for
 * bench/load_bench.py. Not part of the product.
 *
 * It does on the wire what `audiosocket serve --app echo` does, and nothing else (no
 * HTTP port, no /metrics, no logging per call), so that running bench/load_bench.py
 * against it (`--server-impl c`) shows how much of one core the kernel's TCP work alone
 * costs at N calls: whatever the Python server spends above this is its own.
 *
 *   - one thread, epoll, non-blocking sockets, TCP_NODELAY on every accepted socket,
 *     listen backlog 4096;
 *   - per connection an incremental frame decoder (3-byte header kind:u8, length:u16 BE,
 *     then the payload; frames may arrive split or several per read). The first frame
 *     must be the UUID (0x01, 16 bytes): it starts the call; anything else first ends
 *     the connection (with a 00 00 00 hang-up, as the Python server does on a protocol
 *     error). Audio frames (0x10..0x18, non-empty) are queued whole, header included,
 *     exactly as received, in a ring of RING_FRAMES frames (the oldest is dropped beyond
 *     that). A hang-up frame (0x00), EOF or an error ends the call; other kinds are
 *     ignored;
 *   - one shared 20 ms clock on absolute deadlines (timerfd, TFD_TIMER_ABSTIME; tick k at
 *     t0 + k * 20 ms). On each tick every started call gets exactly one frame, written
 *     in one send(): the oldest queued echo frame, else a silence frame of the call's
 *     kind (taken from its first audio frame; 20 ms of zeros at that rate; before any
 *     audio, 0x10 with 320 zero bytes). A short write or EAGAIN leaves the unsent tail in
 *     a per-call output buffer, flushed on EPOLLOUT; later frames queue behind it whole,
 *     so frames never interleave (over OUT_MAX bytes pending, the call is reset, as the
 *     Python server aborts a call over its write_buffer_max_bytes). A tick up to 10
 *     ticks late is caught up (the next deadline is already past, so the timer fires
 *     again at once, as asyncio's call_at does); more than 10 late is a resync: the
 *     missed ticks are skipped, not burst;
 *   - SIGTERM / SIGINT: print one JSON line of totals to stderr and exit 0.
 *
 * Build: gcc -O2 -Wall -o bench/results/echo_floor bench/echo_floor.c
 * Usage: bench/results/echo_floor --port 9092 [--host 127.0.0.1]
 *        (bench/load_bench.py --server-impl c builds and runs it by itself)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS 20000000LL
#define RESYNC_TICKS 10          /* more ticks late than this: skip them, don't burst */
#define RING_FRAMES 50           /* queued echo frames per call (1 s) */
#define OUT_MAX (256 * 1024)     /* unsent bytes per call before it is dropped */
#define RBUF 65536
#define MAX_EVENTS 1024

typedef struct {
    uint8_t *buf;                /* one whole wire frame (header + payload) */
    int len, cap;
} slot_t;

typedef struct conn {
    int fd;
    int started, dead, epollout;
    int kind, fsize;             /* kind and 20 ms payload size of the silence frames */
    int have_audio;
    /* decoder */
    uint8_t hdr[3];
    int hlen;                    /* header bytes so far (3: reading the payload) */
    int need, got;               /* payload length, payload bytes so far */
    int filling;                 /* 1: the payload goes into the ring slot after the last */
    /* echo queue */
    slot_t ring[RING_FRAMES];
    int rhead, rcount;
    /* unsent tail of a short write, then whole frames queued behind it */
    uint8_t *out;
    int out_len, out_cap;
    struct conn *prev, *next;    /* the list of started calls */
    struct conn *gnext;          /* graveyard: freed after the current batch of events */
} conn_t;

static int epfd, lfd, tfd, sfd;
static char tag_listen, tag_timer, tag_signal; /* epoll data.ptr of the non-call fds */
static conn_t *started_head, *started_tail, *graveyard;
static uint8_t *silence[0x19];

static struct {
    unsigned long long accepted, calls, closed, non_calls, frames_in, echo_out, silence_out,
        ring_drops, short_writes, eagain, stalls, ticks, resyncs, skipped_ticks, caught_up;
    long long late_max_ns, tick_ns_sum, tick_ns_max; /* tick_ns: time to write one tick */
} st;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* payload bytes of 20 ms of slin16 mono for an audio kind */
static int frame_size_for(int kind) {
    static const int rate[] = {8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000};
    return rate[kind - 0x10] / 50 * 2;
}

static const uint8_t *silence_frame(int kind, int fsize) {
    if (!silence[kind]) {
        silence[kind] = calloc(1, 3 + fsize);
        if (!silence[kind]) { perror("calloc"); exit(2); }
        silence[kind][0] = (uint8_t)kind;
        silence[kind][1] = (uint8_t)(fsize >> 8);
        silence[kind][2] = (uint8_t)(fsize & 0xff);
    }
    return silence[kind];
}

static void set_events(conn_t *c, int want_out) {
    if (c->epollout == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->epollout = want_out;
}

/* End a connection now; its memory goes when the current batch of events is done. */
static void conn_close(conn_t *c) {
    if (c->dead) return;
    c->dead = 1;
    close(c->fd); /* also removes it from the epoll set */
    if (c->started) {
        if (c->prev) c->prev->next = c->next; else started_head = c->next;
        if (c->next) c->next->prev = c->prev; else started_tail = c->prev;
        st.closed++;
    } else {
        st.non_calls++;
    }
    c->gnext = graveyard;
    graveyard = c;
}

static void free_graveyard(void) {
    while (graveyard) {
        conn_t *c = graveyard;
        graveyard = c->gnext;
        for (int i = 0; i < RING_FRAMES; i++) free(c->ring[i].buf);
        free(c->out);
        free(c);
    }
}

static int out_append(conn_t *c, const uint8_t *p, int len) {
    if (c->out_len + len > OUT_MAX) { /* stalled: reset, as the Python server's abort() */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        st.stalls++;
        conn_close(c);
        return -1;
    }
    if (c->out_len + len > c->out_cap) {
        int cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len) cap *= 2;
        uint8_t *n = realloc(c->out, cap);
        if (!n) { conn_close(c); return -1; }
        c->out = n;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, len);
    c->out_len += len;
    return 0;
}

/* One whole frame in one send(); whatever the kernel does not take waits in c->out. */
static void send_frame(conn_t *c, const uint8_t *f, int len) {
    if (c->out_len) { out_append(c, f, len); return; } /* behind a tail: queue it whole */
    ssize_t w = send(c->fd, f, len, MSG_NOSIGNAL);
    if (w == len) return;
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) { conn_close(c); return; }
        st.eagain++;
        w = 0;
    } else {
        st.short_writes++;
    }
    if (out_append(c, f + w, len - (int)w) == 0) set_events(c, 1);
}

static void flush_out(conn_t *c) {
    while (c->out_len) {
        ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            conn_close(c);
            return;
        }
        memmove(c->out, c->out + w, c->out_len - w);
        c->out_len -= (int)w;
    }
    set_events(c, 0);
}

/* A frame's header has arrived: decide where its payload goes. 0 ok, -1 close. */
static int on_header(conn_t *c) {
    int kind = c->hdr[0];
    c->need = (c->hdr[1] << 8) | c->hdr[2];
    c->got = 0;
    c->filling = 0;
    if (!c->started) return kind == 0x01 ? 0 : -1;
    if (kind < 0x10 || kind > 0x18 || c->need == 0) return 0;
    if (!c->have_audio) {
        c->have_audio = 1;
        c->kind = kind;
        c->fsize = frame_size_for(kind);
    }
    /* Fill the slot after the last queued frame (room made by dropping the oldest): the
     * tick sends only counted slots, so a half-received frame is never sent. An empty
     * ring restarts at slot 0, so a call that keeps up touches one or two slots, not all
     * RING_FRAMES of them (RSS per call stays a floor too). */
    if (c->rcount == 0) {
        c->rhead = 0;
    } else if (c->rcount == RING_FRAMES) {
        c->rhead = (c->rhead + 1) % RING_FRAMES;
        c->rcount--;
        st.ring_drops++;
    }
    slot_t *s = &c->ring[(c->rhead + c->rcount) % RING_FRAMES];
    if (s->cap < 3 + c->need) {
        uint8_t *n = realloc(s->buf, 3 + c->need);
        if (!n) return -1;
        s->buf = n;
        s->cap = 3 + c->need;
    }
    memcpy(s->buf, c->hdr, 3);
    s->len = 3 + c->need;
    c->filling = 1;
    return 0;
}

/* A whole frame has arrived. 0 ok, -1 close. */
static int on_frame(conn_t *c) {
    int kind = c->hdr[0];
    c->hlen = 0;
    st.frames_in++;
    if (!c->started) {
        if (kind != 0x01 || c->need != 16) return -1;
        c->started = 1;
        st.calls++;
        c->prev = started_tail;
        c->next = NULL;
        if (started_tail) started_tail->next = c; else started_head = c;
        started_tail = c;
        return 0;
    }
    if (c->filling) { c->rcount++; c->filling = 0; return 0; }
    if (kind == 0x00) return -1; /* the peer hung up */
    return 0;                    /* UUID again, DTMF, error, unknown: ignored */
}

static int feed(conn_t *c, const uint8_t *p, size_t n) {
    while (n) {
        if (c->hlen < 3) {
            size_t want = (size_t)(3 - c->hlen), take = want < n ? want : n;
            memcpy(c->hdr + c->hlen, p, take);
            c->hlen += (int)take;
            p += take;
            n -= take;
            if (c->hlen < 3) break;
            if (on_header(c) < 0) return -1;
            if (c->need == 0 && on_frame(c) < 0) return -1;
            continue;
        }
        size_t take = (size_t)(c->need - c->got) < n ? (size_t)(c->need - c->got) : n;
        if (c->filling) {
            slot_t *s = &c->ring[(c->rhead + c->rcount) % RING_FRAMES];
            memcpy(s->buf + 3 + c->got, p, take);
        }
        c->got += (int)take;
        p += take;
        n -= take;
        if (c->got == c->need && on_frame(c) < 0) return -1;
    }
    return 0;
}

static void on_readable(conn_t *c) {
    static uint8_t buf[RBUF];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            conn_close(c);
            return;
        }
        if (n == 0) { conn_close(c); return; }
        if (feed(c, buf, (size_t)n) < 0) {
            if (!c->started) { /* protocol error before the call: hang up, as Python does */
                static const uint8_t hangup[3] = {0, 0, 0};
                ssize_t w = send(c->fd, hangup, 3, MSG_NOSIGNAL);
                (void)w;
            }
            conn_close(c);
            return;
        }
        if (n < (ssize_t)sizeof buf) return;
    }
}

static void on_accept(void) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) perror("accept4");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        if (!c) { close(fd); continue; }
        c->fd = fd;
        c->kind = 0x10;
        c->fsize = 320;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) { close(fd); free(c); continue; }
        st.accepted++;
    }
}

static void tick(void) {
    st.ticks++;
    conn_t *next;
    for (conn_t *c = started_head; c; c = next) {
        next = c->next; /* c may be closed (unlinked) below */
        if (c->rcount) {
            slot_t *s = &c->ring[c->rhead];
            c->rhead = (c->rhead + 1) % RING_FRAMES;
            c->rcount--;
            st.echo_out++;
            send_frame(c, s->buf, s->len);
        } else {
            st.silence_out++;
            send_frame(c, silence_frame(c->kind, c->fsize), 3 + c->fsize);
        }
    }
}

static void arm(int64_t deadline) {
    struct itimerspec its = {0};
    its.it_value.tv_sec = deadline / 1000000000LL;
    its.it_value.tv_nsec = deadline % 1000000000LL;
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) { perror("timerfd"); exit(2); }
}

static void report(void) {
    fprintf(stderr,
            "{\"level\": \"info\", \"event\": \"echo_floor_exit\", \"accepted\": %llu, "
            "\"calls\": %llu, \"calls_closed\": %llu, \"non_calls\": %llu, "
            "\"frames_in\": %llu, \"echo_out\": %llu, \"silence_out\": %llu, "
            "\"ring_drops\": %llu, \"short_writes\": %llu, \"eagain\": %llu, "
            "\"write_stalls\": %llu, \"ticks\": %llu, \"caught_up_ticks\": %llu, "
            "\"resyncs\": %llu, \"skipped_ticks\": %llu, \"tick_late_max_ms\": %.3f, "
            "\"tick_dur_avg_ms\": %.3f, \"tick_dur_max_ms\": %.3f}\n",
            st.accepted, st.calls, st.closed, st.non_calls, st.frames_in, st.echo_out,
            st.silence_out, st.ring_drops, st.short_writes, st.eagain, st.stalls, st.ticks,
            st.caught_up, st.resyncs, st.skipped_ticks, st.late_max_ns / 1e6,
            st.ticks ? st.tick_ns_sum / 1e6 / st.ticks : 0.0, st.tick_ns_max / 1e6);
    fflush(stderr);
}

static void usage(void) {
    fprintf(stderr, "usage: echo_floor --port P [--host 127.0.0.1]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = -1;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        if (!strcmp(argv[i], "--port")) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--host")) host = argv[++i];
        else usage();
    }
    if (port < 0 || port > 65535) usage();

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) { perror("sigprocmask"); return 2; }
    sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) { perror("signalfd"); return 2; }

    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "echo_floor: bad IPv4 host %s\n", host);
        return 2;
    }
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) { perror("socket"); return 2; }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 2; }
    if (listen(lfd, 4096) < 0) { perror("listen"); return 2; }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0) { perror("epoll/timerfd"); return 2; }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &tag_listen};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.ptr = &tag_timer;
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.ptr = &tag_signal;
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);

    fprintf(stderr, "{\"level\": \"info\", \"event\": \"listening\", \"host\": \"%s\", "
                    "\"port\": %d, \"app\": \"echo_floor\"}\n", host, port);
    fflush(stderr);

    const int64_t t0 = now_ns();
    int64_t k = 1; /* next tick: due at t0 + k * TICK_NS */
    arm(t0 + k * TICK_NS);
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 2;
        }
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &tag_timer) {
                uint64_t exp;
                if (read(tfd, &exp, sizeof exp) < 0) continue; /* spurious */
                int64_t now = now_ns();
                int64_t late = now - (t0 + k * TICK_NS);
                if (late < 0) { arm(t0 + k * TICK_NS); continue; }
                if (late > st.late_max_ns) st.late_max_ns = late;
                int64_t behind = late / TICK_NS; /* later ticks already due too */
                if (behind > RESYNC_TICKS) {
                    st.resyncs++;
                    st.skipped_ticks += behind;
                    k += behind;
                } else if (behind) {
                    /* catch up one tick per wake-up (the timer fires again at once), with
                     * the sockets served in between, as asyncio's call_at does */
                    st.caught_up++;
                }
                int64_t t_start = now_ns();
                tick();
                int64_t t_used = now_ns() - t_start;
                st.tick_ns_sum += t_used;
                if (t_used > st.tick_ns_max) st.tick_ns_max = t_used;
                k++;
                arm(t0 + k * TICK_NS);
            } else if (p == &tag_listen) {
                on_accept();
            } else if (p == &tag_signal) {
                report();
                return 0;
            } else {
                conn_t *c = p;
                if (c->dead) continue;
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
                if (!c->dead && (evs[i].events & EPOLLOUT)) flush_out(c);
            }
        }
        free_graveyard();
    }
}
