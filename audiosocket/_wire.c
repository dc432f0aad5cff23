/*
 * audiosocket._wire: the steady-state media path of many calls in one C call per tick.
 *
 * Why this exists: at a thousand calls the server reads 50,000 frames a second and writes
 * 50,000. Through uvloop each read is an epoll event, a bytes object and a Python call into
 * Connection.data_received; each write a Python loop step and a Cython transport call.
 * Measured on a 2-core VM that is ~4 us of user-space CPU per frame, as much again as the
 * kernel's TCP work, and it is what put 1000 calls past one core. Here one Python call per
 * tick sends every attached call's frame (one non-blocking send() each), then reads each
 * socket once (one recv()) and hands whole audio frames to the app's fast sink. A relay line
 * (echo: the sink is the playout queue's own append) is read just before its send instead,
 * so a frame that arrived since the last tick goes out now, as on the Python path, not one
 * tick later behind a silent frame. A taped line is read in the send pass too, on every
 * read_ticks-th tick (read_due).
 *
 * Scope, on purpose: only the clean case. A read that is not a run of whole audio frames of
 * the call's kind, EOF, a socket error, a sink that raises, a playout that is not plain or
 * is over its bound, a short or failed write: each is reported back as an event and the
 * Python side detaches the line and handles it on the ordinary (tested) path, with the
 * bytes already read. Nothing here decides protocol or call semantics. A backlog of whole
 * frames (a stall) is still the clean case, up to MAX_READS buffers, and a live queue over
 * its target is trimmed here as Playout.tick trims it (see docs/discussion/media-path.md).
 *
 * A line is a tuple (LINE_* below) built by Connection._attach_native. Its first item is
 * a bytearray holding the line's numbers (struct line_state): the fixed ones, and counters
 * this code adds to and the Python side folds into Playout and Connection (sync_counters,
 * flush_metrics), so the per-tick cost is a memory increment, not Python attribute traffic.
 * The GIL is held throughout: every syscall here is non-blocking.
 *
 * One file of ~1,500 lines, on purpose: the per-tick functions (the line's read and write,
 * the tape's append) are static so the compiler inlines them into the pump's loop, which
 * runs 100,000 times a second at 1000 calls; the rest (take and the Taken a block reads in
 * place, block_shape, frame_clip, interleave) reads the tape's private layout, which no
 * header exports.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <sys/socket.h>

enum { LINE_STATE, LINE_OWNER, LINE_PLAYOUT, LINE_FRAMES, LINE_SINK, LINE_RATE, LINE_HEADER,
       LINE_TAPE, LINE_SILENCE, LINE_SIZE };
/* Exported as LINE_FIELDS, so the Python side takes the positions from here. LINE_SILENCE is
 * the frame sent when nothing is queued: one shared object for every call of a kind
 * (protocol.silence_frame), so a tick of a thousand quiet calls reads one hot object. */
static const char *line_fields[LINE_SIZE] = {"state", "owner", "playout", "frames", "sink", "rate",
                                             "header", "tape", "silence"};

/* A line's tape (LINE_TAPE, or None): a Tape (below) this code appends both directions to
 * instead of calling the app per frame: each inbound frame's audio (header stripped) with
 * the tick it was read at (int64, the call's timeline: Call.tick), each frame sent with its
 * slot (what Playout.tick hands a tick listener). The app takes them in blocks
 * (audiosocket/media.py), about once a second, so recording and silence detection cost one
 * Python call per call per second instead of two per frame. take_tape hands them back as
 * four bytes objects (TAPE_IN_PCM .. TAPE_OUT_TICKS, in that order). */
enum { TAPE_IN_PCM, TAPE_IN_TICKS, TAPE_OUT_PCM, TAPE_OUT_TICKS, TAPE_SIZE };

typedef struct {
    int64_t fd, frame_len, whole; /* fixed */
    int64_t max_frames; /* over this many queued: trimmed (live), else the Python tick */
    int64_t ticks;      /* ticks this line's timeline moved (Playout.ticks, sent_total) */
    int64_t popped;     /* frames taken off the queue (Playout._sent_seq) */
    int64_t audio_sent; /* of which sent (Playout.audio_frames_sent) */
    int64_t frames_in;  /* audio frames handed to the sink (Connection.fast_frames) */
    int64_t gap;        /* silent ticks since the last frame sent (Playout._gap) */
    int64_t underruns;  /* gaps of at most GAP_TICKS closed by a frame (Playout.underruns) */
    int64_t now;        /* the call's absolute tick (never folded): stamps the tape */
    int64_t mark_at;    /* popped reaching this resolves a playback (EV_MARK); < 0: none */
    int64_t clip;       /* a clip is playing: a frame sent ends no live gap (NO_GAP) */
    int64_t wake;       /* a tape line: report a frame that is not digital silence */
    int64_t stream;     /* a TTS stream is open: a silent tick past stream_at is an underrun */
    int64_t stream_at;  /* popped at which the open stream's first frame has gone out */
    int64_t wired;      /* Playout.wired, mirrored by the Python side: 0 sends EV_SLOW */
    int64_t live;       /* Playout.live_frames is set: a live queue over max_frames is trimmed */
    int64_t live_dropped; /* frames trimmed off a live queue (Playout.live_dropped) */
    int64_t read_ticks; /* a tape line reads its socket every this many ticks (<= 1: each) */
} line_state;

/* Exported as STATE_FIELDS (all int64, in this order): playout.py builds its struct from it. */
static const char *state_fields[] = {"fd", "frame_len", "whole", "max_frames", "ticks",
    "popped", "audio_sent", "frames_in", "gap", "underruns", "now", "mark_at", "clip",
    "wake", "stream", "stream_at", "wired", "live", "live_dropped", "read_ticks"};
#define N_STATE_FIELDS ((Py_ssize_t)(sizeof state_fields / sizeof state_fields[0]))

/* Playout._NO_GAP: no live frame went out last, so the silence after it is not a gap. */
#define NO_GAP ((int64_t)1 << 40)

/* On TAPE_OUT_TICKS: this slot sent the line's silence, and TAPE_OUT_PCM holds nothing
 * for it (take_tape puts the zeros back). Slots are far below it. */
#define SILENT_SLOT ((int64_t)1 << 62)

/* A run of at most this many silent ticks between two queued frames is a hole in a live
 * stream (an underrun); a longer one is the caller pausing. Same as playout.GAP_TICKS. */
#define GAP_TICKS 5

enum {
    EV_CHUNK = 1,    /* bytes read that the fast path does not take */
    EV_EOF = 2,      /* the peer closed */
    EV_RECV_ERR = 3, /* errno */
    EV_SLOW = 4,     /* this tick's write needs Playout.tick() (not plain, over its bound) */
    EV_SHORT = 5,    /* partial write: the unsent rest (bytes) */
    EV_SEND_ERR = 6, /* errno */
    EV_APP_ERR = 7,  /* the sink raised: the exception */
    EV_MARK = 8,     /* a playback's frame went out (mark_at): the line stays attached */
    EV_WAKE = 9,     /* a tape line read sound (not digital silence): hand it to Python */
};

#define RBUF 16384
/* A line whose socket holds more than one buffer (a backlog: the server or the network
 * stalled) is read again in the same tick, up to this many buffers of whole frames; a
 * relay's queue is then trimmed to its live target as Playout.tick does. Past it, what is
 * left is handed to the Python side as before (EV_CHUNK): a peer sending far faster than
 * real time meets the tested limits there, and one line cannot hold the tick. Before, any
 * read of a full buffer went to the Python side: after a 2 s stall at 1000 echo calls
 * every line did, and the Python path, at ~95 % of a core, took ~10 s to hand them back. */
#define MAX_READS 4

static PyObject *s_native_line, *s_popleft;

/* collections.deque, and its popleft's C function: a playout queue is a deque, and the
 * pump asks every line's queue for its length and pops a frame from every playing one,
 * 50 times a second each. Py_SIZE and the C function directly skip the generic length
 * protocol and a method lookup by name (perf at 1000 silent ivr calls: ~1 % of a core).
 * Anything else queued (tests) takes the generic calls. */
static PyTypeObject *deque_type;
static PyCFunction deque_popleft;

static int init_deque(void) {
    PyObject *mod = PyImport_ImportModule("collections");
    if (mod == NULL) return -1;
    PyObject *type = PyObject_GetAttrString(mod, "deque");
    Py_DECREF(mod);
    if (type == NULL) return -1;
    if (!PyType_Check(type)) {
        Py_DECREF(type);
        PyErr_SetString(PyExc_TypeError, "collections.deque is not a type");
        return -1;
    }
    PyObject *descr = PyObject_GetAttr(type, s_popleft);
    if (descr == NULL) {
        Py_DECREF(type);
        return -1;
    }
    /* A method of a C type is a method descriptor holding its PyMethodDef; the shortcut
     * is taken only when it is the plain no-argument kind this code calls (else deque_type
     * stays NULL and every queue gets the generic calls). */
    if (Py_IS_TYPE(descr, &PyMethodDescr_Type)) {
        PyMethodDef *def = ((PyMethodDescrObject *)descr)->d_method;
        if ((def->ml_flags & ~METH_COEXIST) == METH_NOARGS) deque_popleft = def->ml_meth;
    }
    Py_DECREF(descr);
    if (deque_popleft != NULL) deque_type = (PyTypeObject *)type; /* kept for good */
    else Py_DECREF(type);
    return 0;
}

static line_state *state_of(PyObject *line) {
    PyObject *ba = PyTuple_GET_ITEM(line, LINE_STATE);
    if (!PyByteArray_CheckExact(ba) || PyByteArray_GET_SIZE(ba) != (Py_ssize_t)sizeof(line_state)) {
        PyErr_SetString(PyExc_TypeError, "a line's state must be a bytearray of STATE_SIZE bytes");
        return NULL;
    }
    return (line_state *)PyByteArray_AS_STRING(ba);
}

/* On a Tape entry: the frame went out (the slot it went out on); without it the frame came
 * in (the tick it was read at). Ticks and slots are far below it. */
#define OUT_ENTRY ((int64_t)1 << 61)

/* A tape: one entry per frame, both directions in the order taped, and the audio of every
 * entry without SILENT_SLOT, exactly frame_bytes each, in the same order. It was four
 * bytearrays (audio and ticks per direction); perf at 1000 record calls put ~5 % of a core
 * on appending to them, most of it the bytearray objects' headers: four cold objects per
 * call per tick, read and written once each. Here a frame's two appends touch this
 * object's one header, the next entry and the next audio bytes, each written in order. */
typedef struct {
    PyObject_HEAD
    int64_t *ev;
    char *pcm;
    PyObject **refs; /* the frames of REF_ENTRY entries, in order (strong references) */
    Py_ssize_t n_ev, cap_ev, n_pcm, cap_pcm, n_refs, cap_refs, fb;
} TapeObject;

/* On a Tape entry: its audio is a queued wire frame's payload, held by reference in refs
 * instead of copied onto pcm. An IVR line's outbound audio is its prompts' frames, which
 * every call playing that prompt shares and which stay in the cache; copying them onto
 * the tape wrote 320 bytes per call per tick into memory that is cold by the time
 * take_tape reads them back (perf at 1000 silent ivr calls: tape_put was ~1.4 % of a
 * core). Holding the frame costs a pointer and a reference count. */
#define REF_ENTRY ((int64_t)1 << 60)

static PyTypeObject Tape_Type;

/* Make room for `need` units (of `unit` bytes) in *buf, which holds `used` units: capacity
 * doubled, so appending is a store; the tape is emptied about once a second and refilled
 * to the same size, keeping its capacity (bytearray's own 12.5 % growth from a freed buffer
 * cost ~35 reallocs per tape per second, ~10 % of a core at 1000 calls). 64-byte aligned
 * (a frame of 320 or 640 bytes then starts on a cache line, which the streaming copy below
 * writes whole). Freed with free(). */
static int grow(void **buf, Py_ssize_t *cap, Py_ssize_t used, Py_ssize_t need, Py_ssize_t unit,
                Py_ssize_t least) {
    Py_ssize_t c = *cap * 2 > need ? *cap * 2 : need;
    if (c < least) c = least;
    void *nb = NULL;
    if (posix_memalign(&nb, 64, (size_t)(c * unit)) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (used) memcpy(nb, *buf, (size_t)(used * unit));
    free(*buf);
    *buf = nb;
    *cap = c;
    return 0;
}

/* Copy a frame's audio onto the tape. Nobody reads it for about a second, by when a
 * thousand calls' tapes have long left the cache: with plain stores each 64 bytes written
 * were first read from memory (perf: memcpy at ~240 ns a frame, the tape's largest cost
 * at 1000 record calls). Streaming stores write the lines without reading them or
 * evicting what the next line's tick needs. */
static void tape_copy(char *dst, const char *src, Py_ssize_t n) {
#if defined(__SSE2__)
    if (((uintptr_t)dst & 15) == 0 && (n & 15) == 0) {
        for (Py_ssize_t i = 0; i < n; i += 16)
            _mm_stream_si128((__m128i *)(dst + i), _mm_loadu_si128((const __m128i *)(src + i)));
        return;
    }
#endif
    memcpy(dst, src, (size_t)n);
}

/* One frame on the tape: `tick` with its flags, and (pcm != NULL) its audio, len bytes,
 * cut or padded with zeros to the tape's frame_bytes so every entry's audio is whole. */
static int tape_put(TapeObject *t, int64_t tick, const char *pcm, Py_ssize_t len) {
    if (t->n_ev == t->cap_ev
        && grow((void **)&t->ev, &t->cap_ev, t->n_ev, t->n_ev + 1, 8, 64) < 0)
        return -1;
    t->ev[t->n_ev++] = tick;
    if (pcm != NULL) {
        Py_ssize_t fb = t->fb;
        if (t->n_pcm + fb > t->cap_pcm
            && grow((void **)&t->pcm, &t->cap_pcm, t->n_pcm, t->n_pcm + fb, 1, 16 * fb) < 0) {
            t->n_ev--;
            return -1;
        }
        char *dst = t->pcm + t->n_pcm;
        if (len >= fb) {
            tape_copy(dst, pcm, fb);
        } else {
            memcpy(dst, pcm, (size_t)len);
            memset(dst + len, 0, (size_t)(fb - len));
        }
        t->n_pcm += fb;
    }
    return 0;
}

/* One outbound frame on the tape by reference: `frame` is a wire frame (bytes: 3-byte
 * header, then exactly frame_bytes of audio), taken with a new reference. */
static int tape_put_ref(TapeObject *t, int64_t tick, PyObject *frame) {
    if (t->n_ev == t->cap_ev
        && grow((void **)&t->ev, &t->cap_ev, t->n_ev, t->n_ev + 1, 8, 64) < 0)
        return -1;
    if (t->n_refs == t->cap_refs
        && grow((void **)&t->refs, &t->cap_refs, t->n_refs, t->n_refs + 1,
                (Py_ssize_t)sizeof(PyObject *), 64) < 0)
        return -1;
    t->ev[t->n_ev++] = tick | REF_ENTRY;
    Py_INCREF(frame);
    t->refs[t->n_refs++] = frame;
    return 0;
}

static void tape_drop_refs(TapeObject *t) {
    for (Py_ssize_t k = 0; k < t->n_refs; k++) Py_DECREF(t->refs[k]);
    t->n_refs = 0;
}

static PyObject *Tape_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Py_ssize_t fb;
    static char *kwlist[] = {"frame_bytes", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n", kwlist, &fb)) return NULL;
    if (fb <= 0) {
        PyErr_SetString(PyExc_ValueError, "frame_bytes must be > 0");
        return NULL;
    }
    TapeObject *t = (TapeObject *)type->tp_alloc(type, 0);
    if (t == NULL) return NULL;
    t->fb = fb;
    return (PyObject *)t;
}

static void Tape_dealloc(TapeObject *t) {
    tape_drop_refs(t);
    free(t->refs);
    free(t->ev);
    free(t->pcm);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static Py_ssize_t Tape_len(TapeObject *t) { return t->n_ev; }

static PyObject *Tape_sizes(TapeObject *t, PyObject *unused) {
    (void)unused;
    Py_ssize_t n[4] = {0, 0, 0, 0};
    for (Py_ssize_t k = 0; k < t->n_ev; k++) {
        int out = (t->ev[k] & OUT_ENTRY) != 0;
        n[out ? TAPE_OUT_TICKS : TAPE_IN_TICKS] += 8;
        /* A REF_ENTRY's audio counts too: take_tape hands it back like copied audio. */
        if (!(t->ev[k] & SILENT_SLOT)) n[out ? TAPE_OUT_PCM : TAPE_IN_PCM] += t->fb;
    }
    return Py_BuildValue("(nnnn)", n[0], n[1], n[2], n[3]);
}

static PyObject *Tape_capacity(TapeObject *t, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(t->cap_ev * 8 + t->cap_pcm
                              + t->cap_refs * (Py_ssize_t)sizeof(PyObject *));
}

static int all_zero(const char *p, Py_ssize_t n);

static PyObject *Tape_put(TapeObject *t, PyObject *const *args, Py_ssize_t nargs) {
    int sent;
    long long tick;
    Py_buffer pcm;
    if (nargs != 3 || (sent = PyObject_IsTrue(args[0])) < 0
        || ((tick = PyLong_AsLongLong(args[1])) == -1 && PyErr_Occurred())) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "put(sent, tick, pcm)");
        return NULL;
    }
    if (tick < 0 || tick >= REF_ENTRY) {
        PyErr_SetString(PyExc_ValueError, "tick out of range");
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &pcm, PyBUF_SIMPLE) < 0) return NULL;
    /* What the tape keeps is the first frame_bytes: only they decide (so audio taped as
     * audio is never all zero, which Taken's span relies on). */
    int zero = all_zero(pcm.buf, pcm.len < t->fb ? pcm.len : t->fb);
    int64_t e = (int64_t)tick | (sent ? OUT_ENTRY : 0) | (zero ? SILENT_SLOT : 0);
    int r = tape_put(t, e, zero ? NULL : pcm.buf, pcm.len);
    PyBuffer_Release(&pcm);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Tape_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Tape_put, METH_FASTCALL,
     "put(sent, tick, pcm): tape one frame as the C path does (for tests and tools):\n"
     "all-zero audio as its tick alone, other audio cut or padded to frame_bytes."},
    {"sizes", (PyCFunction)Tape_sizes, METH_NOARGS,
     "sizes() -> what take_tape would hand back now, in bytes per part: (inbound audio,\n"
     "inbound ticks, outbound audio, outbound slots), digital silence not counted as audio\n"
     "(it is taped as its tick alone)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Tape_getset[] = {
    {"capacity", (getter)Tape_capacity, NULL, "Bytes allocated for entries and audio.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Tape_as_sequence = {.sq_length = (lenfunc)Tape_len};

static PyTypeObject Tape_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "audiosocket._wire.Tape",
    .tp_basicsize = sizeof(TapeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Tape(frame_bytes): what the C path records of a line for its app (_wire.c);\n"
              "len() is the frames on it, take_tape empties it.",
    .tp_new = Tape_new,
    .tp_dealloc = (destructor)Tape_dealloc,
    .tp_methods = Tape_methods,
    .tp_getset = Tape_getset,
    .tp_as_sequence = &Tape_as_sequence,
};

/* The line's tape: NULL when it has none (borrowed; its type is checked by pump). */
static TapeObject *tape_of(PyObject *line) {
    PyObject *t = PyTuple_GET_ITEM(line, LINE_TAPE);
    return t == Py_None ? NULL : (TapeObject *)t;
}

static int tape_ok(PyObject *tape) { return Py_IS_TYPE(tape, &Tape_Type); }

/* Digital silence? A silent caller's every frame is scanned to its end (a byte loop was
 * ~1 % of a core at 1000 silent calls). */
static int all_zero(const char *p, Py_ssize_t n) {
    Py_ssize_t i = 0;
    /* 64 bytes a test: sound fails on its first line, silence (the case that reads all)
     * takes five tests for 320 bytes instead of forty. */
    for (; i + 64 <= n; i += 64) {
        uint64_t w[8], acc = 0;
        memcpy(w, p + i, 64);
        for (int j = 0; j < 8; j++) acc |= w[j];
        if (acc) return 0;
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w) return 0;
    }
    for (; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

static int event(PyObject *events, PyObject *line, int code, PyObject *payload) {
    /* steals payload (may be NULL for None) */
    if (payload == NULL) { payload = Py_None; Py_INCREF(payload); }
    PyObject *t = Py_BuildValue("(OiN)", line, code, payload);
    if (t == NULL) return -1;
    int r = PyList_Append(events, t);
    Py_DECREF(t);
    return r;
}

/* Is this line still the owner's attached line? A sink is Python code and may have ended
 * a call (its own) while this pump runs. */
static int still_attached(PyObject *line) {
    PyObject *owner = PyTuple_GET_ITEM(line, LINE_OWNER);
    PyObject *cur = PyObject_GetAttr(owner, s_native_line);
    if (cur == NULL) { PyErr_Clear(); return 0; }
    int same = (cur == line);
    Py_DECREF(cur);
    return same;
}

static char buf[RBUF];

/* What one read asks for: as many whole frames as buf holds, so a full read of a
 * backlog ends on a frame boundary and the next read starts on one. */
static ssize_t read_size(const line_state *st) {
    ssize_t flen = (ssize_t)st->frame_len;
    return flen > 3 && flen <= RBUF ? (RBUF / flen) * flen : RBUF;
}

/* One recv() of what the line's socket holds, into buf: recv's result, *err its errno. */
static ssize_t recv_line(line_state *st, int *err) {
    ssize_t n = recv((int)st->fd, buf, (size_t)read_size(st), MSG_DONTWAIT);
    *err = n < 0 ? errno : 0;
    return n;
}

/* Hand on what recv_line read (n, err): whole frames to the sink or the tape, anything
 * else as an event; `raw`: all of it as an event (the Python side has taken the line
 * over). `last`: no further read of this line this tick, so a full read (there may be
 * more behind it) goes to the Python side, which reads the rest in order. *again is set
 * when the read was full and taken here (read_more decides whether another follows).
 * 0, or -1 on a Python error. */
static int took(PyObject *line, line_state *st, PyObject *events, int *ran_python,
                ssize_t n, int err, int raw, int last, int *again) {
    *again = 0;
    if (n < 0) {
        if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) return 0;
        return event(events, line, EV_RECV_ERR, PyLong_FromLong(err));
    }
    if (n == 0) return event(events, line, EV_EOF, NULL);
    ssize_t flen = (ssize_t)st->frame_len;
    const char *h = PyBytes_AS_STRING(PyTuple_GET_ITEM(line, LINE_HEADER));
    int full = n == read_size(st);
    int clean = !raw && (!full || !last) && flen > 3 && n % flen == 0;
    for (ssize_t off = 0; clean && off < n; off += flen)
        if (memcmp(buf + off, h, 3) != 0) clean = 0;
    if (!clean) return event(events, line, EV_CHUNK, PyBytes_FromStringAndSize(buf, n));
    TapeObject *tape = tape_of(line);
    if (tape != NULL) {
        /* No Python per frame: the audio goes on the tape with the tick it arrived at. */
        int sound = 0;
        for (ssize_t off = 0; off < n; off += flen) {
            /* Digital silence is taped as its tick alone (SILENT_SLOT set), as the line's
             * own silence is on the way out: a silent caller's 320 bytes a tick were the
             * tape's largest write into memory that is cold by then. take_tape writes the
             * zeros back. The scan stops at the first sound word, so audio costs ~nothing. */
            int zero = all_zero(buf + off + 3, flen - 3);
            if (tape_put(tape, zero ? st->now | SILENT_SLOT : st->now,
                         zero ? NULL : buf + off + 3, flen - 3) < 0)
                return -1;
            if (st->wake && !zero) sound = 1;
            st->frames_in++;
        }
        if (sound) return event(events, line, EV_WAKE, NULL);
        *again = full;
        return 0;
    }
    PyObject *sink = PyTuple_GET_ITEM(line, LINE_SINK);
    PyObject *rate = PyTuple_GET_ITEM(line, LINE_RATE);
    /* A C builtin (echo's deque.append) runs no Python code, so it cannot end a call. */
    int py_sink = !PyCFunction_Check(sink);
    for (ssize_t off = 0; off < n; off += flen) {
        PyObject *res;
        if (py_sink) *ran_python = 1;
        if (st->whole) {
            PyObject *frame = PyBytes_FromStringAndSize(buf + off, flen);
            if (frame == NULL) return -1;
            res = PyObject_CallOneArg(sink, frame);
            Py_DECREF(frame);
        } else {
            PyObject *pcm = PyBytes_FromStringAndSize(buf + off + 3, flen - 3);
            if (pcm == NULL) return -1;
            PyObject *argv[2] = {pcm, rate};
            res = PyObject_Vectorcall(sink, argv, 2, NULL);
            Py_DECREF(pcm);
        }
        st->frames_in++;
        if (res == NULL) {
            /* The rest of this read is not delivered: the app has failed, the call ends. */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
            Py_XDECREF(type);
            Py_XDECREF(tb);
            return event(events, line, EV_APP_ERR, value);
        }
        Py_DECREF(res);
    }
    *again = full;
    return 0;
}

/* Read what is there and hand whole frames to the sink or the tape, a backlog in up to
 * MAX_READS reads (`done` of them taken already); -1 on a Python error. */
static int read_more(PyObject *line, line_state *st, PyObject *events, int *ran_python,
                     int done) {
    /* A Python sink reads once, as before: it may end the call between two reads. */
    int reads = tape_of(line) != NULL || PyCFunction_Check(PyTuple_GET_ITEM(line, LINE_SINK))
                ? MAX_READS : 1;
    for (int r = done; r < reads; r++) {
        int err, again;
        ssize_t n = recv_line(st, &err);
        if (took(line, st, events, ran_python, n, err, 0, r == reads - 1, &again) < 0)
            return -1;
        if (!again) break;
    }
    return 0;
}

static int read_line(PyObject *line, line_state *st, PyObject *events, int *ran_python) {
    return read_more(line, st, events, ran_python, 0);
}

/* Is this a tick a tape line reads its socket? Its audio goes to a tape the app takes in
 * blocks, so nothing waits for a frame the tick it arrives, and each recv() read one frame
 * (a syscall, a socket lock, a window check) for what two read together cost little more:
 * every second tick took ~3 points of a core off the pump at 1000 record or silent ivr calls
 * (docs/BENCHMARKS.md). The phase comes from the fd, so half the lines read on each tick.
 * What a read finds is stamped with the tick it was read at, as a backlog is: the recorder
 * places heard frames one after another and allows JITTER_SLOTS of lag, which a read every
 * two ticks (one slot) leaves room in for the network's own jitter. */
static int read_due(const line_state *st) {
    return st->read_ticks <= 1 || (st->now + st->fd) % st->read_ticks == 0;
}

/* Does this line's sink append to its own playout queue (echo's fast_frame)? Then it is
 * C code (no Python runs) and what it reads is what the line sends. */
static int is_relay(PyObject *line, line_state *st) {
    PyObject *sink = PyTuple_GET_ITEM(line, LINE_SINK);
    return st->whole && PyCFunction_Check(sink)
        && PyCFunction_GET_SELF(sink) == PyTuple_GET_ITEM(line, LINE_FRAMES);
}

/* This tick's frame: the next queued one, or silence; -1 on a Python error. */
static int write_line(PyObject *line, line_state *st, PyObject *events, long advance) {
    /* The line's own numbers and its queue only: the Playout object itself is not read
     * here (it was a cache miss per call per tick; its wired flag is mirrored in st). */
    int is_plain = st->wired != 0;
    PyObject *frames = PyTuple_GET_ITEM(line, LINE_FRAMES);
    int is_deque = Py_IS_TYPE(frames, deque_type); /* NULL: no shortcut */
    Py_ssize_t queued = is_deque ? Py_SIZE(frames) : PyObject_Size(frames);
    if (queued < 0) return -1;
    if (!is_plain) return event(events, line, EV_SLOW, NULL);
    if (queued > st->max_frames) {
        /* Live audio over its target (a relay after a backlog): the oldest goes, counted,
         * as Playout.tick's _trim_live does. A clip's queue, or one without a live
         * target, is over its bound: that is the Python tick's. */
        if (!st->live || st->clip) return event(events, line, EV_SLOW, NULL);
        Py_ssize_t over = queued - (Py_ssize_t)st->max_frames;
        for (Py_ssize_t k = 0; k < over; k++) {
            PyObject *old = is_deque ? deque_popleft(frames, NULL)
                                     : PyObject_CallMethodNoArgs(frames, s_popleft);
            if (old == NULL) return -1;
            Py_DECREF(old);
        }
        st->popped += over;
        st->live_dropped += over;
        queued -= over;
    }
    PyObject *frame;
    if (queued) frame = is_deque ? deque_popleft(frames, NULL)
                             : PyObject_CallMethodNoArgs(frames, s_popleft);
    else {
        frame = PyTuple_GET_ITEM(line, LINE_SILENCE);
        Py_INCREF(frame);
    }
    if (frame == NULL) return -1;
    if (!PyBytes_Check(frame)) {
        Py_DECREF(frame);
        PyErr_SetString(PyExc_TypeError, "a queued frame is not bytes");
        return -1;
    }
    if (queued) st->popped++;
    Py_ssize_t len = PyBytes_GET_SIZE(frame);
    ssize_t w = send((int)st->fd, PyBytes_AS_STRING(frame), (size_t)len,
                     MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        int err = errno;
        Py_DECREF(frame);
        return event(events, line, EV_SEND_ERR, PyLong_FromLong(err));
    }
    /* Sent, or partly handed back for the transport to send: it is this tick's frame.
     * After a resync (advance > 1) the timeline jumps and still one frame goes out, as in
     * Playout.tick: the skipped ticks' frames are not sent late. */
    st->ticks += advance;
    st->now += advance;
    if (queued) {
        st->audio_sent++;
        if (st->clip) {
            st->gap = NO_GAP;
        } else if (st->gap) {
            if (st->gap <= GAP_TICKS) st->underruns += st->gap;
            st->gap = 0;
        }
    } else {
        /* Nothing to send while more of a prompt is coming: the listener hears a hole
         * (Playout.tick counts the same). */
        if (st->stream && st->popped >= st->stream_at) st->underruns++;
        st->gap++;
    }
    TapeObject *tape = tape_of(line);
    if (tape != NULL) {
        /* The line's own silence is taped as its slot alone (SILENT_SLOT set): a recording
         * app sends little else, and copying 320 zero bytes per call per tick was half of
         * the tape's cache traffic. take_tape writes the zeros back. A clip's pause is
         * queued as the line's silence object itself (frame_clip). */
        int64_t slot = (st->now - 1) | OUT_ENTRY;
        int sound = queued && frame != PyTuple_GET_ITEM(line, LINE_SILENCE);
        int r = !sound ? tape_put(tape, slot | SILENT_SLOT, NULL, 0)
                : len - 3 == tape->fb ? tape_put_ref(tape, slot, frame)
                : tape_put(tape, slot, PyBytes_AS_STRING(frame) + 3, len - 3);
        if (r < 0) {
            Py_DECREF(frame);
            return -1;
        }
    }
    if (w < 0) w = 0;
    int r = 0;
    if (w < len)
        r = event(events, line, EV_SHORT,
                  PyBytes_FromStringAndSize(PyBytes_AS_STRING(frame) + w, len - w));
    Py_DECREF(frame);
    if (r == 0 && queued && st->mark_at >= 0 && st->popped >= st->mark_at) {
        st->mark_at = -1; /* once: the Python side sets the next one */
        r = event(events, line, EV_MARK, NULL);
    }
    return r;
}

/* Zero-filled bytes objects of the sizes blocks take, shared by every line: a silent caller's
 * heard audio (and a line that sent only silence) is one of them instead of a new object
 * zeroed into memory nobody has touched for a second and read again by each consumer
 * (the recorder's append, the silence check). Bytes are immutable, so sharing is safe; a
 * few sizes because a block's frame count moves by one or two with jitter. */
#define ZERO_SLOTS 4
static PyObject *zero_cache[ZERO_SLOTS];
static int zero_next;

static int is_shared_zeros(PyObject *obj) {
    for (int i = 0; i < ZERO_SLOTS; i++)
        if (zero_cache[i] == obj) return 1;
    return 0;
}

/* A new reference to a shared zero-filled bytes object of `size` bytes. */
static PyObject *shared_zeros(Py_ssize_t size) {
    for (int i = 0; i < ZERO_SLOTS; i++)
        if (zero_cache[i] != NULL && PyBytes_GET_SIZE(zero_cache[i]) == size) {
            Py_INCREF(zero_cache[i]);
            return zero_cache[i];
        }
    PyObject *z = PyBytes_FromStringAndSize(NULL, size);
    if (z == NULL) return NULL;
    memset(PyBytes_AS_STRING(z), 0, (size_t)size);
    Py_XSETREF(zero_cache[zero_next], z);
    zero_next = (zero_next + 1) % ZERO_SLOTS;
    Py_INCREF(z);
    return z;
}

PyDoc_STRVAR(block_shape_doc,
"block_shape(heard_ticks, sent_ticks, heard) -> (lead_lo, lead_hi, consecutive, silent)\n\n"
"What a block's consumers check before taking it at once, in one pass here instead of a\n"
"dozen numpy calls per call per second: the least and greatest heard_ticks[k] - k (0, 0\n"
"when nothing was heard), whether the slots step by exactly one, and whether the heard\n"
"audio is all zero. The ticks are native int64 buffers (numpy arrays or bytes).");

static PyObject *block_shape(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "block_shape(heard_ticks, sent_ticks, heard)");
        return NULL;
    }
    Py_buffer v[3];
    int got = 0;
    PyObject *result = NULL;
    for (; got < 3; got++)
        if (PyObject_GetBuffer(args[got], &v[got], PyBUF_C_CONTIGUOUS) < 0) goto done;
    if (v[0].len % 8 || v[1].len % 8) {
        PyErr_SetString(PyExc_ValueError, "ticks must be int64");
        goto done;
    }
    const int64_t *h = (const int64_t *)v[0].buf, *s = (const int64_t *)v[1].buf;
    Py_ssize_t m = v[0].len / 8, n = v[1].len / 8;
    int64_t lo = 0, hi = 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        int64_t d = h[k] - (int64_t)k;
        if (k == 0 || d < lo) lo = d;
        if (k == 0 || d > hi) hi = d;
    }
    int consecutive = 1;
    for (Py_ssize_t k = 1; k < n && consecutive; k++)
        if (s[k] != s[k - 1] + 1) consecutive = 0;
    int silent = is_shared_zeros(args[2]) || all_zero((const char *)v[2].buf, v[2].len);
    result = Py_BuildValue("(LLOO)", (long long)lo, (long long)hi,
                           consecutive ? Py_True : Py_False, silent ? Py_True : Py_False);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&v[i]);
    return result;
}

PyDoc_STRVAR(frame_clip_doc,
"frame_clip(header, pcm, frame_size, zeros_after, silence) -> list[bytes]\n\n"
"A clip as wire frames for a playout queue: pcm followed by zeros_after zero bytes, padded\n"
"with zeros to whole frames of frame_size, each frame header + payload. A frame that lies\n"
"wholly in the zeros is the silence object itself (a whole wire frame of zeros, shared),\n"
"so a prompt's pauses cost no memory. One call instead of a Python loop per frame.");

static PyObject *frame_clip(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyBytes_Check(args[0]) || !PyLong_Check(args[2])
        || !PyLong_Check(args[3]) || !PyBytes_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "frame_clip(header: bytes, pcm, frame_size: int, zeros_after: int, "
                        "silence: bytes)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[2]), zeros = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t hl = PyBytes_GET_SIZE(args[0]);
    if (n <= 0 || zeros < 0 || PyBytes_GET_SIZE(args[4]) != hl + n) {
        PyErr_SetString(PyExc_ValueError,
                        "frame_size > 0, zeros_after >= 0, silence one whole frame");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(args[1], &v, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    const char *hdr = PyBytes_AS_STRING(args[0]), *pcm = (const char *)v.buf;
    Py_ssize_t len = v.len;
    Py_ssize_t count = (len + zeros + n - 1) / n;
    PyObject *frames = PyList_New(count);
    if (frames == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t at = i * n;
        PyObject *f;
        if (at >= len) {
            f = args[4];
            Py_INCREF(f);
        } else {
            Py_ssize_t take = len - at < n ? len - at : n;
            f = PyBytes_FromStringAndSize(NULL, hl + n);
            if (f == NULL) {
                Py_CLEAR(frames);
                goto done;
            }
            char *d = PyBytes_AS_STRING(f);
            memcpy(d, hdr, (size_t)hl);
            memcpy(d + hl, pcm + at, (size_t)take);
            if (take < n) memset(d + hl + take, 0, (size_t)(n - take));
        }
        PyList_SET_ITEM(frames, i, f);
    }
done:
    PyBuffer_Release(&v);
    return frames;
}

/* One mono leg of a recording: what the recorder still holds of it (`held`), then the
 * frames it is adding, read as if they followed one another. The frames are either one
 * buffer (interleave_parts: a single frame of any length) or a taken tape's frames of its
 * direction, `fs` samples each, where NULL is a frame of digital silence. */
typedef struct {
    const char *held;
    Py_ssize_t held_n;         /* whole 16-bit samples held */
    const char *const *frames; /* nframes pointers; NULL: fs zero samples */
    Py_ssize_t fs, nframes;
} leg;

/* Where sample k of the leg is (NULL: a zero sample), and how many samples follow it
 * alike (0: the leg has no sample k). */
static Py_ssize_t leg_at(const leg *g, Py_ssize_t k, const char **at) {
    if (k < g->held_n) {
        *at = g->held + 2 * k;
        return g->held_n - k;
    }
    k -= g->held_n;
    if (g->fs > 0 && k < g->fs * g->nframes) {
        Py_ssize_t f = k / g->fs, off = k - f * g->fs;
        *at = g->frames[f] != NULL ? g->frames[f] + 2 * off : NULL;
        return g->fs - off;
    }
    *at = NULL;
    return 0;
}

/* Samples from..from+count of the leg into d (zeros where the leg has silence or ends). */
static void leg_copy(const leg *g, Py_ssize_t from, Py_ssize_t count, char *d) {
    while (count > 0) {
        const char *at;
        Py_ssize_t run = leg_at(g, from, &at);
        if (run == 0 || run > count) run = count;
        if (at != NULL) memcpy(d, at, (size_t)(2 * run));
        else memset(d, 0, (size_t)(2 * run));
        d += 2 * run;
        from += run;
        count -= run;
    }
}

/* n stereo samples into d: sample k of left then of right, zeros past a leg's end. Runs
 * where both legs are contiguous go eight samples at a time (gcc -O2 makes the fixed inner
 * loop two vector unpacks, about 4x a sample at a time). Copies go through memcpy: a
 * buffer need not be 2-aligned, and 16-bit units keep their bytes on any host. */
static void interleave_legs_into(char *d, const leg *left, const leg *right, Py_ssize_t n) {
    /* A leg's silence (a frame taped as digital silence, or past its end) is read from
     * here with a stride of 0, so it takes the same eight-at-a-time loop as audio. */
    static const char zeros[16];
    Py_ssize_t k = 0;
    while (k < n) {
        const char *l, *r;
        Py_ssize_t cl = leg_at(left, k, &l), cr = leg_at(right, k, &r);
        Py_ssize_t run = n - k;
        if (cl && cl < run) run = cl;
        if (cr && cr < run) run = cr;
        Py_ssize_t sl = l != NULL ? 2 : 0, sr = r != NULL ? 2 : 0;
        if (l == NULL) l = zeros;
        if (r == NULL) r = zeros;
        Py_ssize_t j = 0;
        for (; j + 8 <= run; j += 8) {
            uint16_t a[8], b[8], o[16];
            memcpy(a, l + sl * j, 16);
            memcpy(b, r + sr * j, 16);
            for (int q = 0; q < 8; q++) {
                o[2 * q] = a[q];
                o[2 * q + 1] = b[q];
            }
            memcpy(d + 4 * (k + j), o, 32);
        }
        for (; j < run; j++) {
            memcpy(d + 4 * (k + j), l + sl * j, 2);
            memcpy(d + 4 * (k + j) + 2, r + sr * j, 2);
        }
        k += run;
    }
}

/* interleave(...) and interleave_parts(...): legs given as `parts` buffers each (1 or 2),
 * args[0 .. 2*parts - 1], then nbytes. */
static PyObject *interleave_n(PyObject *const *args, Py_ssize_t nargs, int parts,
                              const char *usage) {
    if (nargs != 2 * parts + 1 || !PyLong_Check(args[2 * parts])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    Py_ssize_t nbytes = PyLong_AsSsize_t(args[2 * parts]);
    if (nbytes < 0 || nbytes % 2 || nbytes > PY_SSIZE_T_MAX / 2) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "nbytes must be even, >= 0");
        return NULL;
    }
    Py_buffer v[4];
    int got = 0;
    PyObject *result = NULL;
    for (; got < 2 * parts; got++)
        if (PyObject_GetBuffer(args[got], &v[got], PyBUF_SIMPLE) < 0) goto done;
    result = PyBytes_FromStringAndSize(NULL, 2 * nbytes);
    if (result == NULL) goto done;
    leg legs[2];
    const char *tail[2];
    for (int side = 0; side < 2; side++) {
        /* Only the leg's first nbytes count (an odd last byte is no sample). */
        Py_ssize_t room = nbytes, n[2] = {0, 0};
        const char *p[2] = {NULL, NULL};
        for (int i = 0; i < parts; i++) {
            const Py_buffer *b = &v[side * parts + i];
            if (i < parts - 1 && b->len % 2) {
                PyErr_SetString(PyExc_ValueError, "a leg's first part must be whole samples");
                Py_CLEAR(result);
                goto done;
            }
            Py_ssize_t use = b->len < room ? b->len : room;
            p[i] = b->buf;
            n[i] = use / 2;
            room -= n[i] * 2;
        }
        tail[side] = p[1];
        legs[side] = (leg){p[0], n[0], &tail[side], n[1], n[1] > 0};
    }
    interleave_legs_into(PyBytes_AS_STRING(result), &legs[0], &legs[1], nbytes / 2);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&v[i]);
    return result;
}

PyDoc_STRVAR(interleave_doc,
"interleave(left, right, nbytes) -> bytes\n\n"
"Stereo 16-bit audio from two mono legs: 2 * nbytes bytes, sample k of left then sample k\n"
"of right, from the first nbytes (even) of each buffer, zeros where a buffer is shorter.\n"
"The recorder's flush, once per call per second: one pass straight into the new bytes\n"
"object instead of numpy's zeros, two strided copies and tobytes.");

static PyObject *interleave(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    return interleave_n(args, nargs, 1, "interleave(left, right, nbytes: int)");
}

PyDoc_STRVAR(interleave_parts_doc,
"interleave_parts(left_a, left_b, right_a, right_b, nbytes) -> bytes\n\n"
"interleave() of left_a + left_b and right_a + right_b, without joining them: the\n"
"recorder's held frames and the block it adds are read where they are (two copies of\n"
"every block's audio into the held buffers were a third of the recording's cost).");

static PyObject *interleave_parts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    return interleave_n(args, nargs, 2,
                        "interleave_parts(left_a, left_b, right_a, right_b, nbytes: int)");
}

/* ---- Taking a tape: its buffers move to a Taken object, nothing is copied ------------
 *
 * A block used to leave the tape as four new bytes objects (take_tape), which every
 * consumer then read again: the recorder interleaved the heard and sent audio into the
 * stereo it appends, so each block's audio was written twice and read twice before the
 * file's own copy (at 1000 record calls: ~14 us a block for the take, ~21 for the
 * recorder). Now take() hands the tape's buffers to a Taken object and gives the tape a
 * set of the same capacity from a small pool (Taken objects give theirs back when they
 * go), and a consumer reads what it needs from the Taken: the recorder its stereo straight
 * from the taped frames, the VAD the heard audio (the shared zeros when it was silence). */

typedef struct {
    PyObject_HEAD
    int64_t *ev;
    char *pcm;
    PyObject **refs; /* strong references, as on the tape */
    Py_ssize_t n_ev, cap_ev, n_pcm, cap_pcm, n_refs, cap_refs, fb;
    /* The span, from one pass over the entries at take(): see Taken_span. */
    Py_ssize_t n_in, n_out;
    int64_t first_slot, last_slot, first_heard, last_heard, lead_lo, lead_hi;
    int consecutive, silent;
} TakenObject;

/* Buffer sets Taken objects gave back, for the next tape taken with the same capacities:
 * at a thousand calls ten tapes are taken per tick and each Taken goes within it, so one
 * or two sets circulate instead of three allocations and frees per block. */
#define POOL_SETS 32
#define POOL_SET_BYTES (8 << 20) /* larger sets (a long detach at 192 kHz) are freed */
typedef struct {
    int64_t *ev;
    char *pcm;
    PyObject **refs;
    Py_ssize_t cap_ev, cap_pcm, cap_refs;
} bufset;
static bufset pool[POOL_SETS];
static int pool_n;

static Py_ssize_t set_bytes(Py_ssize_t cap_ev, Py_ssize_t cap_pcm, Py_ssize_t cap_refs) {
    return cap_ev * 8 + cap_pcm + cap_refs * (Py_ssize_t)sizeof(PyObject *);
}

static void pool_give(bufset b) {
    if (pool_n < POOL_SETS && set_bytes(b.cap_ev, b.cap_pcm, b.cap_refs) <= POOL_SET_BYTES) {
        pool[pool_n++] = b;
        return;
    }
    free(b.ev);
    free(b.pcm);
    free(b.refs);
}

/* One buffer of `cap` units for a fresh set: NULL for none (0), -1 when out of memory. */
static int set_alloc(void **buf, Py_ssize_t cap, Py_ssize_t unit) {
    *buf = NULL;
    if (cap == 0) return 0;
    if (posix_memalign(buf, 64, (size_t)(cap * unit)) != 0) {
        *buf = NULL;
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* A set with exactly these capacities: a pooled one, else a new one. -1: out of memory. */
static int pool_take(bufset *out, Py_ssize_t cap_ev, Py_ssize_t cap_pcm, Py_ssize_t cap_refs) {
    for (int i = pool_n - 1; i >= 0; i--) {
        if (pool[i].cap_ev == cap_ev && pool[i].cap_pcm == cap_pcm
            && pool[i].cap_refs == cap_refs) {
            *out = pool[i];
            pool[i] = pool[--pool_n];
            return 0;
        }
    }
    bufset b = {NULL, NULL, NULL, cap_ev, cap_pcm, cap_refs};
    if (set_alloc((void **)&b.ev, cap_ev, 8) < 0
        || set_alloc((void **)&b.pcm, cap_pcm, 1) < 0
        || set_alloc((void **)&b.refs, cap_refs, (Py_ssize_t)sizeof(PyObject *)) < 0) {
        free(b.ev);
        free(b.pcm);
        free(b.refs);
        return -1;
    }
    *out = b;
    return 0;
}

/* The capacity a tape keeps after a take: the same, unless it is far above what it held
 * (a long detach), which is given back (the tape grows again as it needs). */
static Py_ssize_t kept_cap(Py_ssize_t cap, Py_ssize_t used, Py_ssize_t unit) {
    return cap * unit > (1 << 18) && cap > 4 * (used + 1) ? 0 : cap;
}

static PyTypeObject Taken_Type;

static void Taken_dealloc(TakenObject *t) {
    for (Py_ssize_t k = 0; k < t->n_refs; k++) Py_DECREF(t->refs[k]);
    pool_give((bufset){t->ev, t->pcm, t->refs, t->cap_ev, t->cap_pcm, t->cap_refs});
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* Where each frame of one direction's audio is, in order (NULL: digital silence), into
 * `at` (n_in or n_out pointers). */
static void frames_of(const TakenObject *t, int out, const char **at) {
    const char *src = t->pcm;
    PyObject *const *ref = t->refs;
    Py_ssize_t j = 0;
    for (Py_ssize_t k = 0; k < t->n_ev; k++) {
        int64_t e = t->ev[k];
        const char *p = NULL;
        if (e & SILENT_SLOT) {
            p = NULL;
        } else if (e & REF_ENTRY) {
            p = PyBytes_AS_STRING(*ref++) + 3;
        } else {
            p = src;
            src += t->fb;
        }
        if (((e & OUT_ENTRY) != 0) == out) at[j++] = p;
    }
}

/* The span: counts, first and last tick of each direction, the heard frames' lead, whether
 * the slots step by one and whether the heard audio is all digital silence. */
static void taken_span(TakenObject *t) {
    Py_ssize_t n_in = 0, n_out = 0;
    int64_t lo = 0, hi = 0, prev = 0;
    int consecutive = 1, silent = 1;
    t->first_slot = t->last_slot = t->first_heard = t->last_heard = 0;
    for (Py_ssize_t k = 0; k < t->n_ev; k++) {
        int64_t e = t->ev[k];
        int64_t tick = e & ~(SILENT_SLOT | OUT_ENTRY | REF_ENTRY);
        if (e & OUT_ENTRY) {
            if (n_out == 0) t->first_slot = tick;
            else if (tick != prev + 1) consecutive = 0;
            prev = t->last_slot = tick;
            n_out++;
        } else {
            int64_t d = tick - (int64_t)n_in;
            if (n_in == 0) {
                lo = hi = d;
                t->first_heard = tick;
            }
            if (d < lo) lo = d;
            if (d > hi) hi = d;
            t->last_heard = tick;
            /* Heard audio taped as audio is never all zero: the pump and Tape.put tape
             * that as SILENT_SLOT (reading the frames here was a cache miss each). */
            if (!(e & SILENT_SLOT)) silent = 0;
            n_in++;
        }
    }
    t->n_in = n_in;
    t->n_out = n_out;
    t->lead_lo = lo;
    t->lead_hi = hi;
    t->consecutive = consecutive;
    t->silent = silent;
}

/* What `tape` holds as a Taken object (NULL with no exception: the tape is empty). */
static TakenObject *take_taken(TapeObject *tape) {
    if (tape->n_ev == 0) return NULL;
    bufset fresh;
    if (pool_take(&fresh, kept_cap(tape->cap_ev, tape->n_ev, 8),
                  kept_cap(tape->cap_pcm, tape->n_pcm, 1),
                  kept_cap(tape->cap_refs, tape->n_refs, (Py_ssize_t)sizeof(PyObject *))) < 0)
        return NULL;
    TakenObject *t = PyObject_New(TakenObject, &Taken_Type);
    if (t == NULL) {
        pool_give(fresh);
        return NULL;
    }
#if defined(__SSE2__)
    _mm_sfence(); /* the streaming stores are ordered before what reads them */
#endif
    t->ev = tape->ev;
    t->pcm = tape->pcm;
    t->refs = tape->refs;
    t->n_ev = tape->n_ev;
    t->cap_ev = tape->cap_ev;
    t->n_pcm = tape->n_pcm;
    t->cap_pcm = tape->cap_pcm;
    t->n_refs = tape->n_refs;
    t->cap_refs = tape->cap_refs;
    t->fb = tape->fb;
    tape->ev = fresh.ev;
    tape->pcm = fresh.pcm;
    tape->refs = fresh.refs;
    tape->cap_ev = fresh.cap_ev;
    tape->cap_pcm = fresh.cap_pcm;
    tape->cap_refs = fresh.cap_refs;
    tape->n_ev = tape->n_pcm = tape->n_refs = 0;
    taken_span(t);
    return t;
}

/* One direction's audio (pcm) or ticks as a new bytes object; a direction of digital
 * silence only is one of the shared zero objects. */
static PyObject *taken_part(TakenObject *t, int out, int pcm) {
    Py_ssize_t n = out ? t->n_out : t->n_in, fb = t->fb;
    if (!pcm) {
        PyObject *r = PyBytes_FromStringAndSize(NULL, n * 8);
        if (r == NULL) return NULL;
        int64_t *d = (int64_t *)PyBytes_AS_STRING(r);
        for (Py_ssize_t k = 0; k < t->n_ev; k++)
            if (((t->ev[k] & OUT_ENTRY) != 0) == out)
                *d++ = t->ev[k] & ~(SILENT_SLOT | OUT_ENTRY | REF_ENTRY);
        return r;
    }
    Py_ssize_t quiet = 0;
    for (Py_ssize_t k = 0; k < t->n_ev; k++)
        if (((t->ev[k] & OUT_ENTRY) != 0) == out && (t->ev[k] & SILENT_SLOT)) quiet++;
    if (n > 0 && quiet == n) return shared_zeros(n * fb);
    const char **at = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(char *));
    if (at == NULL) return PyErr_NoMemory();
    frames_of(t, out, at);
    PyObject *r = PyBytes_FromStringAndSize(NULL, n * fb);
    if (r != NULL) {
        char *d = PyBytes_AS_STRING(r);
        for (Py_ssize_t j = 0; j < n; j++, d += fb) {
            if (at[j] != NULL) memcpy(d, at[j], (size_t)fb);
            else memset(d, 0, (size_t)fb);
        }
    }
    PyMem_Free(at);
    return r;
}

static PyObject *Taken_heard(TakenObject *t, PyObject *unused) {
    (void)unused;
    return taken_part(t, 0, 1);
}

static PyObject *Taken_heard_ticks(TakenObject *t, PyObject *unused) {
    (void)unused;
    return taken_part(t, 0, 0);
}

static PyObject *Taken_sent(TakenObject *t, PyObject *unused) {
    (void)unused;
    return taken_part(t, 1, 1);
}

static PyObject *Taken_sent_ticks(TakenObject *t, PyObject *unused) {
    (void)unused;
    return taken_part(t, 1, 0);
}

/* `held`'s first samples, then the rest of one direction after the first `skip` of
 * held + frames, as a new bytearray. */
static PyObject *leg_rest(const leg *g, Py_ssize_t skip) {
    Py_ssize_t total = g->held_n + g->fs * g->nframes;
    Py_ssize_t count = total > skip ? total - skip : 0;
    PyObject *r = PyByteArray_FromStringAndSize(NULL, 2 * count);
    if (r != NULL) leg_copy(g, skip, count, PyByteArray_AS_STRING(r));
    return r;
}

PyDoc_STRVAR(Taken_interleave_doc,
"interleave(held_in, held_out, nbytes) -> (stereo, rest_in, rest_out)\n\n"
"interleave_parts(held_in, heard, held_out, sent, nbytes) read straight from the taped\n"
"frames (no heard or sent bytes made), and what is left of held_in + heard and of\n"
"held_out + sent after their first nbytes, as new bytearrays: the recorder's flush of a\n"
"block in one pass. held_in and held_out must be whole samples.");

static PyObject *Taken_interleave(TakenObject *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "interleave(held_in, held_out, nbytes: int)");
        return NULL;
    }
    Py_ssize_t nbytes = PyLong_AsSsize_t(args[2]);
    if (nbytes < 0 || nbytes % 2 || nbytes > PY_SSIZE_T_MAX / 2) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "nbytes must be even, >= 0");
        return NULL;
    }
    if (t->fb % 2) {
        PyErr_SetString(PyExc_ValueError, "frames of an odd number of bytes");
        return NULL;
    }
    Py_buffer v[2];
    int got = 0;
    PyObject *result = NULL, *stereo = NULL, *rest[2] = {NULL, NULL};
    const char **at = NULL;
    for (; got < 2; got++)
        if (PyObject_GetBuffer(args[got], &v[got], PyBUF_SIMPLE) < 0) goto done;
    if (v[0].len % 2 || v[1].len % 2) {
        PyErr_SetString(PyExc_ValueError, "the held audio must be whole samples");
        goto done;
    }
    at = PyMem_Malloc((size_t)(t->n_in + t->n_out + 1) * sizeof(char *));
    if (at == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    frames_of(t, 0, at);
    frames_of(t, 1, at + t->n_in);
    Py_ssize_t fs = t->fb / 2;
    leg legs[2] = {{v[0].buf, v[0].len / 2, at, fs, t->n_in},
                   {v[1].buf, v[1].len / 2, at + t->n_in, fs, t->n_out}};
    stereo = PyBytes_FromStringAndSize(NULL, 2 * nbytes);
    if (stereo == NULL) goto done;
    interleave_legs_into(PyBytes_AS_STRING(stereo), &legs[0], &legs[1], nbytes / 2);
    for (int side = 0; side < 2; side++)
        if ((rest[side] = leg_rest(&legs[side], nbytes / 2)) == NULL) goto done;
    result = PyTuple_Pack(3, stereo, rest[0], rest[1]);
done:
    PyMem_Free(at);
    Py_XDECREF(stereo);
    Py_XDECREF(rest[0]);
    Py_XDECREF(rest[1]);
    for (int i = 0; i < got; i++) PyBuffer_Release(&v[i]);
    return result;
}

static PyObject *Taken_span(TakenObject *t, void *closure) {
    (void)closure;
    return Py_BuildValue("(nLLnLLLLOO)", t->n_out, (long long)t->first_slot,
                         (long long)t->last_slot, t->n_in, (long long)t->first_heard,
                         (long long)t->last_heard, (long long)t->lead_lo,
                         (long long)t->lead_hi, t->consecutive ? Py_True : Py_False,
                         t->silent ? Py_True : Py_False);
}

static PyObject *Taken_frame_bytes(TakenObject *t, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(t->fb);
}

static PyMethodDef Taken_methods[] = {
    {"heard", (PyCFunction)Taken_heard, METH_NOARGS,
     "heard() -> bytes: the inbound frames' audio, zeros where digital silence was taped\n"
     "(the shared zeros when all of it was)."},
    {"heard_ticks", (PyCFunction)Taken_heard_ticks, METH_NOARGS,
     "heard_ticks() -> bytes: the tick each inbound frame was read at (int64)."},
    {"sent", (PyCFunction)Taken_sent, METH_NOARGS,
     "sent() -> bytes: the outbound frames' audio, as heard()."},
    {"sent_ticks", (PyCFunction)Taken_sent_ticks, METH_NOARGS,
     "sent_ticks() -> bytes: the slot each outbound frame went out on (int64)."},
    {"interleave", (PyCFunction)(void (*)(void))Taken_interleave, METH_FASTCALL,
     Taken_interleave_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Taken_getset[] = {
    {"span", (getter)Taken_span, NULL,
     "(sent_frames, first_slot, last_slot, heard_frames, first_heard, last_heard, lead_lo,\n"
     "lead_hi, consecutive, silent): see audiosocket.media.Span and Shape.", NULL},
    {"frame_bytes", (getter)Taken_frame_bytes, NULL, "Audio bytes per frame.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Taken_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "audiosocket._wire.Taken",
    .tp_basicsize = sizeof(TakenObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What take(tape) took: the tape's frames, read in place (see _wire.c).",
    .tp_dealloc = (destructor)Taken_dealloc,
    .tp_methods = Taken_methods,
    .tp_getset = Taken_getset,
};

static int frame_bytes_arg(TapeObject *t, PyObject *arg) {
    Py_ssize_t fb = PyLong_AsSsize_t(arg);
    if (fb != t->fb) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "frame_bytes %zd, but the tape's frames are %zd",
                         fb, t->fb);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(take_doc,
"take(tape, frame_bytes) -> Taken | None\n\n"
"What a tape holds, moved to a Taken object without copying, leaving the tape empty with\n"
"buffers of the same capacity (a capacity far above what was taken, after a long detach,\n"
"is given back); None when it is empty.");

static PyObject *take(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !tape_ok(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "take(tape: Tape, frame_bytes: int)");
        return NULL;
    }
    TapeObject *tape = (TapeObject *)args[0];
    if (frame_bytes_arg(tape, args[1]) < 0) return NULL;
    TakenObject *t = take_taken(tape);
    if (t == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    return (PyObject *)t;
}

PyDoc_STRVAR(take_tape_doc,
"take_tape(tape, frame_bytes) -> (in_pcm, in_ticks, out_pcm, out_ticks) | None\n\n"
"What a tape holds, as four bytes objects, leaving it empty with its capacity kept (the\n"
"next second fills it again without a realloc); None when it is empty. Each pcm has\n"
"frame_bytes for every tick in its ticks (int64): zeros where the frame was digital\n"
"silence (taped as its tick alone); a pcm that is all such frames is a zero-filled bytes\n"
"object shared by every tape. A capacity far above what was taken (after a long detach)\n"
"is given back. take() and the Taken's parts, at once.");

static PyObject *take_tape(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *taken = take(self, args, nargs);
    if (taken == NULL || taken == Py_None) return taken;
    TakenObject *t = (TakenObject *)taken;
    PyObject *parts[TAPE_SIZE] = {taken_part(t, 0, 1), taken_part(t, 0, 0),
                                  taken_part(t, 1, 1), taken_part(t, 1, 0)};
    PyObject *result = NULL;
    if (parts[0] && parts[1] && parts[2] && parts[3])
        result = PyTuple_Pack(4, parts[0], parts[1], parts[2], parts[3]);
    for (int i = 0; i < TAPE_SIZE; i++) Py_XDECREF(parts[i]);
    Py_DECREF(taken);
    return result;
}

/* What the lines a few places on will touch, asked for now: each line's tuple, numbers,
 * queue and tape are separate objects, and a tick's syscalls for the lines before it evict
 * them, so each was a wait on memory (perf at 1000 silent ivr calls: the pump's own time
 * was mostly the loads of the tuple, the tape's next entry and the queue, a few points of a
 * core). In stages, since each needs a pointer the stage before brought in: the tuple
 * three lines on; the objects it holds two on; what those point to (the numbers, the
 * tape's next entry) one on. Only hints: nothing here can fail or change anything. */
#define PREFETCH(p) __builtin_prefetch((const void *)(p), 1, 3)
static inline void prefetch_ahead(PyObject *lines, Py_ssize_t i, Py_ssize_t n) {
    if (i + 3 < n) {
        PyObject *t = PyList_GET_ITEM(lines, i + 3);
        PREFETCH(t);
        PREFETCH((char *)t + 64);
    }
    if (i + 2 < n) {
        PyObject *t = PyList_GET_ITEM(lines, i + 2);
        PREFETCH(PyTuple_GET_ITEM(t, LINE_STATE));
        PREFETCH(PyTuple_GET_ITEM(t, LINE_FRAMES));
        PREFETCH(PyTuple_GET_ITEM(t, LINE_TAPE));
        PREFETCH(PyTuple_GET_ITEM(t, LINE_HEADER));
    }
    if (i + 1 < n) {
        PyObject *t = PyList_GET_ITEM(lines, i + 1);
        PyObject *ba = PyTuple_GET_ITEM(t, LINE_STATE);
        if (PyByteArray_CheckExact(ba)) {
            const char *s = PyByteArray_AS_STRING(ba);
            PREFETCH(s);
            PREFETCH(s + 64);
            PREFETCH(s + sizeof(line_state) - 1); /* 136 bytes: a third line unless aligned */
        }
        PyObject *tape = PyTuple_GET_ITEM(t, LINE_TAPE);
        if (tape != Py_None && tape_ok(tape)) {
            TapeObject *tp = (TapeObject *)tape;
            if (tp->n_ev < tp->cap_ev) PREFETCH(tp->ev + tp->n_ev);
            if (tp->n_refs < tp->cap_refs) PREFETCH(tp->refs + tp->n_refs);
        }
    }
}

PyDoc_STRVAR(pump_doc,
"pump(lines, advance) -> list\n\n"
"For each line (a tuple built by the server): send its frame for this tick (queued or\n"
"silence), updating the same counters as the Python path (the timeline moves by\n"
"advance, > 1 after a resync); then, for each, read what its\n"
"socket holds and hand whole audio frames of its kind to its sink. Returns the events the\n"
"Python side must handle, as (line, code, payload) tuples; empty in the steady state.");

static PyObject *pump(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyList_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "pump(lines: list, advance: int)");
        return NULL;
    }
    PyObject *lines = args[0];
    long advance = PyLong_AsLong(args[1]);
    if (advance < 1) {
        PyErr_SetString(PyExc_ValueError, "advance must be >= 1");
        return NULL;
    }
    /* A sink may end a call and the server then builds a new list of lines; this one,
     * held here, stays as it was. */
    Py_INCREF(lines);
    Py_ssize_t n = PyList_GET_SIZE(lines);
    PyObject *events = PyList_New(0);
    char *skip = PyMem_Calloc(n > 0 ? (size_t)n : 1, 1);
    if (events == NULL || skip == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        if (!PyTuple_Check(line) || PyTuple_GET_SIZE(line) != LINE_SIZE) {
            PyErr_SetString(PyExc_TypeError, "a line must be a tuple of LINE_SIZE items");
            goto fail;
        }
        if (state_of(line) == NULL) goto fail;
        PyObject *tape = PyTuple_GET_ITEM(line, LINE_TAPE);
        if (tape != Py_None && !tape_ok(tape)) {
            PyErr_SetString(PyExc_TypeError, "a line's tape must be a Tape");
            goto fail;
        }
    }
    /* Every call's frame first, in one tight pass: the outbound timing is what Asterisk
     * hears, so it must not wait behind the reads. No Python code runs in this pass. A
     * relay is read first (one recv, its sink is C): what arrived since the last tick is
     * this tick's frame; reading it after the send made every echo a tick later and put a
     * silent frame into the stream whenever the caller's phase moved. */
    for (Py_ssize_t i = 0; i < n; i++) {
        prefetch_ahead(lines, i, n);
        PyObject *line = PyList_GET_ITEM(lines, i);
        line_state *st = state_of(line);
        Py_ssize_t before = PyList_GET_SIZE(events);
        if (is_relay(line, st)) {
            int ran = 0;
            skip[i] = 1;
            if (read_line(line, st, events, &ran) < 0) goto fail;
            if (PyList_GET_SIZE(events) != before) {
                /* The Python side takes the read over, then writes this tick's frame after
                 * it (the chunk may hold the audio that frame carries). */
                if (event(events, line, EV_SLOW, NULL) < 0) goto fail;
                continue;
            }
        }
        /* A taped line is read in this pass: its read runs no Python (the audio goes on
         * the tape), and the socket's kernel state is still in the cache. Read in a second
         * pass over a thousand sockets, every socket was fetched from memory twice a tick:
         * perf put ~14 % of a core on it at 1000 record calls against echo (whose relay
         * reads next to its send too). The recv() comes before the send() and what it read
         * is handed on after it: the frames are stamped as read after this tick's frame,
         * as before, but the ACK for them leaves with that frame. Received after the send,
         * their window update went out as a segment of its own (perf: ~5 % of a core at
         * 1000 record calls in the kernel's transmit and the peer's ACK processing). It is
         * read on every read_ticks-th tick only (read_due). */
        TapeObject *tape = skip[i] ? NULL : tape_of(line);
        ssize_t got = 0;
        int err = 0;
        int due = tape != NULL && read_due(st);
        if (due) got = recv_line(st, &err);
        if (write_line(line, st, events, advance) < 0) goto fail;
        /* The Python side takes a line with a write event over, reads included (not for a
         * mark: the line stays attached). */
        Py_ssize_t now_n = PyList_GET_SIZE(events);
        if (now_n != before) {
            PyObject *last = PyList_GET_ITEM(events, now_n - 1);
            if (now_n - before > 1
                || PyLong_AsLong(PyTuple_GET_ITEM(last, 1)) != EV_MARK)
                skip[i] = 1;
        }
        if (tape != NULL) {
            /* Taken over by the Python side (a write event): what was read goes with it,
             * in order after this tick's frame, as bytes it decodes itself. */
            int ran = 0, raw = skip[i], again;
            skip[i] = 1;
            if (!due) continue; /* its frames wait in the socket for its next read */
            if (took(line, st, events, &ran, got, err, raw, MAX_READS == 1, &again) < 0)
                goto fail;
            if (again && read_more(line, st, events, &ran, 1) < 0) goto fail;
        }
    }
    /* Then what each call sent us: read now, it goes out on the next tick (echo) or to
     * the app. */
    int ran_python = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (skip[i]) continue;
        PyObject *line = PyList_GET_ITEM(lines, i);
        Py_INCREF(line);
        if (ran_python && !still_attached(line)) { Py_DECREF(line); continue; }
        int r = read_line(line, state_of(line), events, &ran_python);
        Py_DECREF(line);
        if (r < 0) goto fail;
    }
    PyMem_Free(skip);
    Py_DECREF(lines);
    return events;
fail:
    PyMem_Free(skip);
    Py_DECREF(lines);
    Py_XDECREF(events);
    return NULL;
}

static PyMethodDef methods[] = {
    {"pump", (PyCFunction)(void (*)(void))pump, METH_FASTCALL, pump_doc},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL, take_doc},
    {"take_tape", (PyCFunction)(void (*)(void))take_tape, METH_FASTCALL, take_tape_doc},
    {"block_shape", (PyCFunction)(void (*)(void))block_shape, METH_FASTCALL, block_shape_doc},
    {"frame_clip", (PyCFunction)(void (*)(void))frame_clip, METH_FASTCALL, frame_clip_doc},
    {"interleave", (PyCFunction)(void (*)(void))interleave, METH_FASTCALL, interleave_doc},
    {"interleave_parts", (PyCFunction)(void (*)(void))interleave_parts, METH_FASTCALL,
     interleave_parts_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "audiosocket._wire",
    "The steady-state media path of many calls, one C call per tick (see _wire.c).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__wire(void) {
#define INTERN(var, s) if ((var = PyUnicode_InternFromString(s)) == NULL) return NULL
    INTERN(s_native_line, "_native_line");
    INTERN(s_popleft, "popleft");
#undef INTERN
    if (init_deque() < 0) return NULL;
    if (PyType_Ready(&Tape_Type) < 0 || PyType_Ready(&Taken_Type) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Tape", (PyObject *)&Tape_Type) < 0
        || PyModule_AddObjectRef(m, "Taken", (PyObject *)&Taken_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "LINE_SIZE", LINE_SIZE) < 0
        || PyModule_AddIntConstant(m, "STATE_SIZE", (long)sizeof(line_state)) < 0
        || PyModule_AddIntConstant(m, "EV_CHUNK", EV_CHUNK) < 0
        || PyModule_AddIntConstant(m, "EV_EOF", EV_EOF) < 0
        || PyModule_AddIntConstant(m, "EV_RECV_ERR", EV_RECV_ERR) < 0
        || PyModule_AddIntConstant(m, "EV_SLOW", EV_SLOW) < 0
        || PyModule_AddIntConstant(m, "EV_SHORT", EV_SHORT) < 0
        || PyModule_AddIntConstant(m, "EV_SEND_ERR", EV_SEND_ERR) < 0
        || PyModule_AddIntConstant(m, "EV_APP_ERR", EV_APP_ERR) < 0
        || PyModule_AddIntConstant(m, "EV_MARK", EV_MARK) < 0
        || PyModule_AddIntConstant(m, "EV_WAKE", EV_WAKE) < 0
        || PyModule_AddIntConstant(m, "TAPE_SIZE", TAPE_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (N_STATE_FIELDS * 8 != (Py_ssize_t)sizeof(line_state)) {
        Py_DECREF(m);
        PyErr_SetString(PyExc_SystemError, "STATE_FIELDS does not match line_state");
        return NULL;
    }
    PyObject *fields = PyTuple_New(N_STATE_FIELDS);
    PyObject *lfields = PyTuple_New(LINE_SIZE);
    if (fields == NULL || lfields == NULL) goto bad;
    for (Py_ssize_t i = 0; i < N_STATE_FIELDS; i++) {
        PyObject *name = PyUnicode_FromString(state_fields[i]);
        if (name == NULL) goto bad;
        PyTuple_SET_ITEM(fields, i, name);
    }
    for (Py_ssize_t i = 0; i < LINE_SIZE; i++) {
        PyObject *name = PyUnicode_FromString(line_fields[i]);
        if (name == NULL) goto bad;
        PyTuple_SET_ITEM(lfields, i, name);
    }
    if (PyModule_AddObjectRef(m, "STATE_FIELDS", fields) < 0
        || PyModule_AddObjectRef(m, "LINE_FIELDS", lfields) < 0)
        goto bad;
    Py_DECREF(fields);
    Py_DECREF(lfields);
    return m;
bad:
    Py_XDECREF(fields);
    Py_XDECREF(lfields);
    Py_DECREF(m);
    return NULL;
}
