/* meshd._fastct: the conntrack event hot path in C (issue 14).
 *
 * Owns: decode_into (the same decode as meshd/kernel/ctnetlink/events.py,
 * whose docstring is the spec of the key and of the CtEvent fields), the
 * batch reader of the event socket (recvmmsg, EventReader) and the batch
 * sender of sync frames (sendmmsg).
 *
 * The Python code stays the reference: every check below is one of
 * events.py's, in the same order and with the same message, so that a
 * malformed message raises the same CtDecodeError in both (the tests run
 * every decode test against both). Python objects it returns (CtEvent, the
 * error types) and expectations' decode (_decode_exp, rare) come from
 * events.py through bind().
 *
 * Must not: block (every socket call is MSG_DONTWAIT), keep a Python object
 * it did not take a reference to, or know more of a conntrack entry than
 * events.py's hot path does.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* linux/netlink.h, linux/netfilter/nfnetlink_conntrack.h: the numbers events.py imports */
#define HDR_LEN 16
#define NFGEN_LEN 4
#define NLA_TYPE_MASK 0x3FFF
#define NLMSG_ERROR_T 2
#define NLMSG_DONE_T 3
#define NLMSG_OVERRUN_T 4
#define NLM_F_MULTI_F 0x2
#define NLM_F_DUMP_INTR_F 0x10
#define NLM_F_CREATE_F 0x400
#define CT_NEW_T 0x100
#define CT_DELETE_T 0x102
#define CT_EXP_NEW_T 0x200
#define CT_EXP_DELETE_T 0x202
#define CTA_TUPLE_ORIG 1
#define CTA_STATUS 3
#define CTA_PROTOINFO 4
#define CTA_ZONE 18
#define CTA_TUPLE_IP 1
#define CTA_TUPLE_PROTO 2
#define CTA_TUPLE_ZONE 3
#define CTA_PROTO_NUM 1
#define CTA_PROTO_SRC_PORT 2
#define CTA_PROTO_DST_PORT 3
#define CTA_PROTO_ICMP_ID 4
#define CTA_PROTO_ICMP_TYPE 5
#define CTA_PROTO_ICMP_CODE 6
#define CTA_PROTO_ICMPV6_ID 7
#define CTA_PROTO_ICMPV6_TYPE 8
#define CTA_PROTO_ICMPV6_CODE 9
#define CTA_PROTOINFO_TCP 1
#define CTA_PROTOINFO_TCP_STATE 1
#define KIND_NEW 1
#define KIND_UPDATE 2
#define KIND_DESTROY 3
#define KIND_EXP_NEW 4
#define KIND_EXP_DESTROY 6
#define RESULT_DONE 1
#define RESULT_DUMP_INTERRUPTED 2

/* EventReader.read() statuses; reader.py maps them to its Overrun reasons */
#define READ_OK 0
#define READ_ENOBUFS 1
#define READ_TRUNCATED 2
#define READ_DECODE 3

static PyObject *CtEvent_type;      /* a tuple subclass: instances are made like tuple.__new__ does */
static PyObject *CtDecodeError;
static PyObject *CtNetlinkError;
static PyObject *decode_exp;        /* events._decode_exp(buf, start, end, kind, pid) */

static inline unsigned get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static int
decode_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg != NULL) {
        PyErr_SetObject(CtDecodeError, msg);
        Py_DECREF(msg);
    }
    return -1;
}

static int
netlink_error(long long err, unsigned long seq)
{
    PyObject *e = PyObject_CallFunction(CtNetlinkError, "Lk", err, seq);
    if (e != NULL) {
        PyErr_SetObject(CtNetlinkError, e);
        Py_DECREF(e);
    }
    return -1;
}

/* Offsets into one message's attrs (nfgenmsg + attributes); -1: absent. */
typedef struct {
    Py_ssize_t tuple_zone, proto, src, dst, sport, dport, itype, icode, iid;
} OrigOffsets;

/* events._orig_offsets: CTA_TUPLE_ORIG's members in [start, end). */
static int
orig_offsets(const uint8_t *a, Py_ssize_t start, Py_ssize_t end, Py_ssize_t addr_len, OrigOffsets *o)
{
    o->tuple_zone = o->proto = o->src = o->dst = -1;
    o->sport = o->dport = o->itype = o->icode = o->iid = -1;
    Py_ssize_t p = start;
    while (p + 4 <= end) {
        Py_ssize_t alen = get16(a + p);
        unsigned t = get16(a + p + 2) & NLA_TYPE_MASK;
        if (alen < 4 || p + alen > end)
            return decode_error("bad tuple attribute length %zd at offset %zd", alen, p);
        if (t == CTA_TUPLE_IP || t == CTA_TUPLE_PROTO) {
            Py_ssize_t b = p + 4, e = p + alen;
            while (b + 4 <= e) {
                Py_ssize_t blen = get16(a + b);
                unsigned bt = get16(a + b + 2) & NLA_TYPE_MASK;
                if (blen < 4 || b + blen > e)
                    return decode_error("bad tuple member length %zd at offset %zd", blen, b);
                Py_ssize_t n = blen - 4;
                if (t == CTA_TUPLE_IP) {
                    if (bt >= 1 && bt <= 4) {       /* CTA_IP_V4_SRC, _V4_DST, _V6_SRC, _V6_DST */
                        if (n != addr_len)
                            return decode_error("address length does not match family %d", (int)a[0]);
                        if (bt == 1 || bt == 3)
                            o->src = b + 4;
                        else
                            o->dst = b + 4;
                    }
                }
                else if (bt == CTA_PROTO_NUM) {
                    if (n != 1)
                        return decode_error("CTA_PROTO_NUM is not 1 byte");
                    o->proto = b + 4;
                }
                else if (bt == CTA_PROTO_SRC_PORT || bt == CTA_PROTO_DST_PORT
                         || bt == CTA_PROTO_ICMP_ID || bt == CTA_PROTO_ICMPV6_ID) {
                    if (n != 2)
                        return decode_error("proto attribute %u is not 2 bytes", bt);
                    if (bt == CTA_PROTO_SRC_PORT)
                        o->sport = b + 4;
                    else if (bt == CTA_PROTO_DST_PORT)
                        o->dport = b + 4;
                    else
                        o->iid = b + 4;
                }
                else if (bt == CTA_PROTO_ICMP_TYPE || bt == CTA_PROTO_ICMPV6_TYPE
                         || bt == CTA_PROTO_ICMP_CODE || bt == CTA_PROTO_ICMPV6_CODE) {
                    if (n != 1)
                        return decode_error("icmp type/code is not 1 byte");
                    if (bt == CTA_PROTO_ICMP_TYPE || bt == CTA_PROTO_ICMPV6_TYPE)
                        o->itype = b + 4;
                    else
                        o->icode = b + 4;
                }
                b += (blen + 3) & ~3;
            }
        }
        else if (t == CTA_TUPLE_ZONE) {
            if (alen != 6)
                return decode_error("CTA_TUPLE_ZONE is not 2 bytes");
            o->tuple_zone = p + 4;
        }
        p += (alen + 3) & ~3;
    }
    return 0;
}

/* events._tcp_state_offset: CTA_PROTOINFO -> _TCP -> _TCP_STATE in [start, end), or -1. */
static int
tcp_state_offset(const uint8_t *a, Py_ssize_t start, Py_ssize_t end, Py_ssize_t *out)
{
    Py_ssize_t p = start;
    *out = -1;
    while (p + 4 <= end) {
        Py_ssize_t alen = get16(a + p);
        if (alen < 4 || p + alen > end)
            return decode_error("bad protoinfo attribute length %zd at offset %zd", alen, p);
        if ((get16(a + p + 2) & NLA_TYPE_MASK) == CTA_PROTOINFO_TCP) {
            Py_ssize_t b = p + 4, e = p + alen;
            while (b + 4 <= e) {
                Py_ssize_t blen = get16(a + b);
                if (blen < 4 || b + blen > e)
                    return decode_error("bad tcp protoinfo length %zd at offset %zd", blen, b);
                if ((get16(a + b + 2) & NLA_TYPE_MASK) == CTA_PROTOINFO_TCP_STATE) {
                    if (blen != 5)
                        return decode_error("tcp state is not 1 byte");
                    *out = b + 4;
                    return 0;
                }
                b += (blen + 3) & ~3;
            }
            return 0;
        }
        p += (alen + 3) & ~3;
    }
    return 0;
}

static inline uint8_t *
put(uint8_t *k, const uint8_t *a, Py_ssize_t offset, Py_ssize_t n)
{
    if (offset >= 0)
        memcpy(k, a + offset, n);
    else
        memset(k, 0, n);            /* an absent field counts as zeros */
    return k + n;
}

/* A CtEvent of 9 fields; steals the references (NULLs: an error already set). */
static PyObject *
new_event(PyObject *fields[9])
{
    PyObject *ev = NULL;
    for (int i = 0; i < 9; i++)
        if (fields[i] == NULL)
            goto fail;
    ev = ((PyTypeObject *)CtEvent_type)->tp_alloc((PyTypeObject *)CtEvent_type, 9);
    if (ev == NULL)
        goto fail;
    for (int i = 0; i < 9; i++)
        PyTuple_SET_ITEM(ev, i, fields[i]);
    return ev;
fail:
    for (int i = 0; i < 9; i++)
        Py_XDECREF(fields[i]);
    return NULL;
}

/* events._decode_ct, as its general walk (_build_decode_plan) does it: the plans
 * are Python's way to avoid the walk; here the walk is the cheap part. */
static PyObject *
decode_ct(const uint8_t *a, Py_ssize_t end, int kind, uint32_t pid)
{
    if (end < NFGEN_LEN) {
        decode_error("truncated nfgenmsg");
        return NULL;
    }
    Py_ssize_t addr_len = a[0] == 2 ? 4 : a[0] == 10 ? 16 : 0;
    if (addr_len == 0) {
        decode_error("unsupported family %d", (int)a[0]);
        return NULL;
    }
    OrigOffsets o;
    int have_orig = 0;
    Py_ssize_t zone = -1, status = -1, tcp_state = -1;
    Py_ssize_t p = NFGEN_LEN;
    while (p + 4 <= end) {
        Py_ssize_t alen = get16(a + p);
        unsigned t = get16(a + p + 2) & NLA_TYPE_MASK;
        if (alen < 4 || p + alen > end) {
            decode_error("bad attribute length %zd at offset %zd", alen, p);
            return NULL;
        }
        if (t == CTA_TUPLE_ORIG && !have_orig) {
            if (orig_offsets(a, p + 4, p + alen, addr_len, &o) < 0)
                return NULL;
            have_orig = 1;
        }
        else if (t == CTA_STATUS) {
            if (alen != 8) {
                decode_error("CTA_STATUS is not 4 bytes");
                return NULL;
            }
            status = p + 4;
        }
        else if (t == CTA_PROTOINFO) {
            if (tcp_state_offset(a, p + 4, p + alen, &tcp_state) < 0)
                return NULL;
        }
        else if (t == CTA_ZONE) {
            if (alen != 6) {
                decode_error("CTA_ZONE is not 2 bytes");
                return NULL;
            }
            if (zone < 0)
                zone = p + 4;
        }
        p += (alen + 3) & ~3;
    }
    if (!have_orig) {
        decode_error("conntrack message without CTA_TUPLE_ORIG");
        return NULL;
    }
    if (o.src < 0 || o.dst < 0 || o.proto < 0) {
        decode_error("orig tuple without source, destination or protocol");
        return NULL;
    }
    if (o.tuple_zone >= 0)
        zone = o.tuple_zone;        /* a directional zone: the orig direction's is the identity */

    uint8_t key[2 + 1 + 1 + 16 + 16 + 4];
    uint8_t *k = put(key, a, zone, 2);
    *k++ = a[0];
    *k++ = a[o.proto];
    k = put(k, a, o.src, addr_len);
    k = put(k, a, o.dst, addr_len);
    if (a[o.proto] == 1 || a[o.proto] == 58) {     /* ICMP, ICMPv6: type, code, id */
        k = put(k, a, o.itype, 1);
        k = put(k, a, o.icode, 1);
        k = put(k, a, o.iid, 2);
    }
    else {
        k = put(k, a, o.sport, 2);
        k = put(k, a, o.dport, 2);
    }
    PyObject *fields[9] = {
        PyLong_FromLong(kind),
        PyBytes_FromStringAndSize((const char *)key, k - key),
        PyBytes_FromStringAndSize((const char *)a, end),
        PyLong_FromUnsignedLong(pid),
        PyLong_FromLong(a[o.proto]),
        PyBytes_FromStringAndSize((const char *)a + o.src, addr_len),
        PyBytes_FromStringAndSize((const char *)a + o.dst, addr_len),
        NULL, NULL,
    };
    if (status >= 0) {
        const uint8_t *s = a + status;
        fields[7] = PyLong_FromUnsignedLong((unsigned long)s[0] << 24 | s[1] << 16 | s[2] << 8 | s[3]);
    }
    else
        fields[7] = Py_NewRef(Py_None);
    fields[8] = tcp_state >= 0 ? PyLong_FromLong(a[tcp_state]) : Py_NewRef(Py_None);
    return new_event(fields);
}

/* events.decode_into over buf[0:n]. buf_obj: the same bytes as an object, or
 * NULL (made only if an expectation needs it). Returns the DONE /
 * DUMP_INTERRUPTED bits, or -1 with an exception set. */
static long
decode_buffer(const uint8_t *buf, Py_ssize_t n, PyObject *buf_obj, PyObject *out)
{
    Py_ssize_t pos = 0;
    long result = 0;
    PyObject *own_obj = NULL;
    while (pos < n) {
        if (n - pos < HDR_LEN) {
            decode_error("truncated nlmsghdr at offset %zd", pos);
            goto fail;
        }
        uint32_t mlen = get32(buf + pos);
        unsigned mtype = get16(buf + pos + 4), mflags = get16(buf + pos + 6);
        uint32_t mseq = get32(buf + pos + 8), pid = get32(buf + pos + 12);
        if (mlen < HDR_LEN || (uint64_t)pos + mlen > (uint64_t)n) {
            decode_error("bad nlmsg_len %lu at offset %zd", (unsigned long)mlen, pos);
            goto fail;
        }
        if (mflags & NLM_F_DUMP_INTR_F)
            result |= RESULT_DUMP_INTERRUPTED;
        if (mtype == CT_NEW_T || mtype == CT_DELETE_T) {
            int kind;
            if (mtype == CT_DELETE_T)
                kind = KIND_DESTROY;
            else if ((mflags & (NLM_F_CREATE_F | NLM_F_MULTI_F)) || mseq)
                kind = KIND_NEW;
            else
                kind = KIND_UPDATE;
            PyObject *ev = decode_ct(buf + pos + HDR_LEN, mlen - HDR_LEN, kind, pid);
            if (ev == NULL)
                goto fail;
            int r = PyList_Append(out, ev);
            Py_DECREF(ev);
            if (r < 0)
                goto fail;
        }
        else if (mtype == CT_EXP_NEW_T || mtype == CT_EXP_DELETE_T) {
            if (buf_obj == NULL) {
                buf_obj = own_obj = PyBytes_FromStringAndSize((const char *)buf, n);
                if (buf_obj == NULL)
                    goto fail;
            }
            PyObject *ev = PyObject_CallFunction(decode_exp, "Onnlk", buf_obj, pos, pos + (Py_ssize_t)mlen,
                                                 (long)(mtype == CT_EXP_NEW_T ? KIND_EXP_NEW : KIND_EXP_DESTROY),
                                                 (unsigned long)pid);
            if (ev == NULL)
                goto fail;
            int r = PyList_Append(out, ev);
            Py_DECREF(ev);
            if (r < 0)
                goto fail;
        }
        else if (mtype == NLMSG_ERROR_T) {
            if (mlen < HDR_LEN + 4) {
                decode_error("truncated nlmsgerr at offset %zd", pos);
                goto fail;
            }
            int32_t err = (int32_t)get32(buf + pos + HDR_LEN);
            if (err) {
                netlink_error(-(long long)err, mseq);
                goto fail;
            }
        }
        else if (mtype == NLMSG_DONE_T) {
            /* A dump that failed midway ends with DONE carrying -errno. */
            if (mlen >= HDR_LEN + 4) {
                int32_t err = (int32_t)get32(buf + pos + HDR_LEN);
                if (err < 0) {
                    netlink_error(-(long long)err, mseq);
                    goto fail;
                }
            }
            Py_XDECREF(own_obj);
            return result | RESULT_DONE;
        }
        else if (mtype == NLMSG_OVERRUN_T) {
            netlink_error(ENOBUFS, mseq);
            goto fail;
        }
        pos += ((Py_ssize_t)mlen + 3) & ~(Py_ssize_t)3;
    }
    Py_XDECREF(own_obj);
    return result;
fail:
    Py_XDECREF(own_obj);
    return -1;
}

static int
check_bound(void)
{
    if (CtEvent_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "meshd._fastct: bind() was not called");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(decode_into_doc,
"decode_into(buf, out) -> int\n\n"
"events.decode_into: the CtEvents of buf appended to the list out; returns\n"
"the DONE | DUMP_INTERRUPTED bits; CtDecodeError (CtNetlinkError) as there.");

static PyObject *
fastct_decode_into(PyObject *self, PyObject *args)
{
    Py_buffer view;
    PyObject *out;
    if (check_bound() < 0 || !PyArg_ParseTuple(args, "y*O!:decode_into", &view, &PyList_Type, &out))
        return NULL;
    PyObject *obj = PyBytes_CheckExact(view.obj) ? view.obj : NULL;
    long r = decode_buffer(view.buf, view.len, obj, out);
    PyBuffer_Release(&view);
    return r < 0 ? NULL : PyLong_FromLong(r);
}

PyDoc_STRVAR(bind_doc,
"bind(CtEvent, CtDecodeError, CtNetlinkError, decode_exp)\n\n"
"The Python types the decoder makes and raises, and the expectations' decoder.");

static PyObject *
fastct_bind(PyObject *self, PyObject *args)
{
    PyObject *ev, *de, *ne, *dx;
    if (!PyArg_ParseTuple(args, "O!OOO:bind", &PyType_Type, &ev, &de, &ne, &dx))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)ev, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "bind: CtEvent must be a tuple subclass");
        return NULL;
    }
    Py_XSETREF(CtEvent_type, Py_NewRef(ev));
    Py_XSETREF(CtDecodeError, Py_NewRef(de));
    Py_XSETREF(CtNetlinkError, Py_NewRef(ne));
    Py_XSETREF(decode_exp, Py_NewRef(dx));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ EventReader */

typedef struct {
    PyObject_HEAD
    int fd;
    unsigned slots;             /* datagrams per recvmmsg */
    size_t slot_size;           /* bytes per datagram: longer ones are "truncated" */
    uint8_t *bufs;
    struct iovec *iov;
    struct mmsghdr *msgs;
    unsigned next, received;    /* datagrams [next, received) of the last recvmmsg: not yet handled */
} EventReader;

static void
EventReader_dealloc(EventReader *self)
{
    PyMem_RawFree(self->bufs);
    PyMem_RawFree(self->iov);
    PyMem_RawFree(self->msgs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
EventReader_init(EventReader *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "slots", "slot_size", NULL};
    int fd;
    unsigned slots;
    Py_ssize_t slot_size;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iIn:EventReader", kwlist, &fd, &slots, &slot_size))
        return -1;
    if (fd < 0 || slots < 1 || slots > 1024 || slot_size < HDR_LEN || slot_size > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "EventReader: fd >= 0, 1 <= slots <= 1024, 16 <= slot_size <= 1 MiB");
        return -1;
    }
    if (self->bufs != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "EventReader: already initialised");
        return -1;
    }
    /* slots * slot_size of address space; only the pages datagrams touch get memory */
    self->bufs = PyMem_RawMalloc((size_t)slots * slot_size);
    self->iov = PyMem_RawCalloc(slots, sizeof(struct iovec));
    self->msgs = PyMem_RawCalloc(slots, sizeof(struct mmsghdr));
    if (self->bufs == NULL || self->iov == NULL || self->msgs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->fd = fd;
    self->slots = slots;
    self->slot_size = slot_size;
    for (unsigned i = 0; i < slots; i++) {
        self->iov[i].iov_base = self->bufs + (size_t)i * slot_size;
        self->iov[i].iov_len = slot_size;
        self->msgs[i].msg_hdr.msg_iov = &self->iov[i];
        self->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

PyDoc_STRVAR(read_doc,
"read(burst, own, out) -> (status, datagrams, own_skipped, detail)\n\n"
"reader.read_burst's loop: up to burst datagrams without blocking, each\n"
"decoded into out unless its nlmsg_pid is in the set own (skipped, counted).\n"
"Stops at the first loss; the datagrams a recvmmsg brought after it are\n"
"kept for the next call, where the socket would have kept them.\n"
"status: 0 (empty or burst reached), 1 ENOBUFS, 2 truncated (detail: its\n"
"size), 3 undecodable (detail: (message, size)). Other errors raise OSError.");

static PyObject *
EventReader_read(EventReader *self, PyObject *args)
{
    unsigned burst;
    PyObject *own, *out;
    if (check_bound() < 0 || !PyArg_ParseTuple(args, "IOO!:read", &burst, &own, &PyList_Type, &out))
        return NULL;
    if (!PyAnySet_Check(own)) {
        PyErr_SetString(PyExc_TypeError, "read: own must be a set or frozenset");
        return NULL;
    }
    if (self->msgs == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "EventReader: not initialised");
        return NULL;
    }
    int check_own = PySet_GET_SIZE(own) > 0;
    unsigned datagrams = 0, skipped = 0;
    int status = READ_OK;
    PyObject *detail = NULL;
    while (datagrams < burst) {
        if (self->next == self->received) {
            unsigned want = burst - datagrams < self->slots ? burst - datagrams : self->slots;
            int r;
            int err;
            do {
                r = recvmmsg(self->fd, self->msgs, want, MSG_DONTWAIT | MSG_TRUNC, NULL);
                err = errno;
            } while (r < 0 && err == EINTR);
            if (r < 0) {
                if (err == EAGAIN || err == EWOULDBLOCK)
                    break;
                if (err == ENOBUFS) {
                    status = READ_ENOBUFS;
                    break;
                }
                errno = err;
                return PyErr_SetFromErrno(PyExc_OSError);
            }
            self->next = 0;
            self->received = (unsigned)r;
            if (r == 0)
                break;
        }
        unsigned i = self->next++;
        datagrams++;
        size_t n = self->msgs[i].msg_len;      /* MSG_TRUNC: the datagram's real length */
        const uint8_t *data = self->bufs + (size_t)i * self->slot_size;
        if (n > self->slot_size) {
            status = READ_TRUNCATED;
            detail = PyLong_FromSize_t(n);
            if (detail == NULL)
                return NULL;
            break;
        }
        if (n >= HDR_LEN && check_own) {
            /* One event per datagram: the first header's portid is the event's. */
            PyObject *pid = PyLong_FromUnsignedLong(get32(data + 12));
            if (pid == NULL)
                return NULL;
            int mine = PySet_Contains(own, pid);
            Py_DECREF(pid);
            if (mine < 0)
                return NULL;
            if (mine) {
                skipped++;
                continue;
            }
        }
        if (decode_buffer(data, (Py_ssize_t)n, NULL, out) < 0) {
            if (!PyErr_ExceptionMatches(CtDecodeError))
                return NULL;
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            PyObject *text = value != NULL ? PyObject_Str(value) : NULL;
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
            if (text == NULL)
                return NULL;
            status = READ_DECODE;
            detail = Py_BuildValue("(Nn)", text, (Py_ssize_t)n);
            if (detail == NULL)
                return NULL;
            break;
        }
    }
    if (detail == NULL)
        detail = Py_NewRef(Py_None);
    return Py_BuildValue("(iIIN)", status, datagrams, skipped, detail);
}

static PyObject *
EventReader_pending(EventReader *self, PyObject *unused)
{
    return PyLong_FromUnsignedLong(self->received - self->next);
}

static PyMethodDef EventReader_methods[] = {
    {"read", (PyCFunction)EventReader_read, METH_VARARGS, read_doc},
    {"pending", (PyCFunction)EventReader_pending, METH_NOARGS,
     "Datagrams read from the socket and not yet handled (after a stop at a loss)."},
    {NULL}
};

static PyTypeObject EventReader_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshd._fastct.EventReader",
    .tp_doc = "EventReader(fd, slots, slot_size): conntrack events read with recvmmsg.\n\n"
              "The fd stays the caller's: this object never closes it.",
    .tp_basicsize = sizeof(EventReader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)EventReader_init,
    .tp_dealloc = (destructor)EventReader_dealloc,
    .tp_methods = EventReader_methods,
};

/* -------------------------------------------------------------------- sendmmsg */

#define SEND_CHUNK 64

PyDoc_STRVAR(sendmmsg_doc,
"sendmmsg(fd, datagrams) -> (sent, failures)\n\n"
"Each (data: bytes, sockaddr: bytes) of the sequence sent in order, up to 64\n"
"per sendmmsg() call, MSG_DONTWAIT. A datagram that fails is skipped and\n"
"the rest still go (what a loop of sendto does): failures is None, or a\n"
"list of (index, errno) in order. Never raises for a send error.");

static PyObject *
fastct_sendmmsg(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iO:sendmmsg", &fd, &seq))
        return NULL;
    PyObject *items = PySequence_Fast(seq, "sendmmsg: datagrams must be a sequence");
    if (items == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(items);
    struct mmsghdr msgs[SEND_CHUNK];
    struct iovec iov[SEND_CHUNK];
    PyObject *failures = NULL;
    Py_ssize_t sent = 0, base = 0;
    while (base < count) {
        unsigned k = count - base < SEND_CHUNK ? (unsigned)(count - base) : SEND_CHUNK;
        memset(msgs, 0, sizeof(msgs[0]) * k);
        for (unsigned j = 0; j < k; j++) {
            PyObject *item = PySequence_Fast_GET_ITEM(items, base + j);
            char *data, *addr;
            Py_ssize_t dlen, alen;
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2
                || PyBytes_AsStringAndSize(PyTuple_GET_ITEM(item, 0), &data, &dlen) < 0
                || PyBytes_AsStringAndSize(PyTuple_GET_ITEM(item, 1), &addr, &alen) < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "sendmmsg: each datagram is (bytes, sockaddr bytes)");
                goto fail;
            }
            if (alen < (Py_ssize_t)sizeof(sa_family_t) || alen > (Py_ssize_t)sizeof(struct sockaddr_storage)) {
                PyErr_Format(PyExc_ValueError, "sendmmsg: sockaddr of %zd bytes at index %zd", alen, base + j);
                goto fail;
            }
            iov[j].iov_base = data;
            iov[j].iov_len = dlen;
            msgs[j].msg_hdr.msg_name = addr;
            msgs[j].msg_hdr.msg_namelen = (socklen_t)alen;
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        unsigned done = 0;
        while (done < k) {
            int r = sendmmsg(fd, msgs + done, k - done, MSG_DONTWAIT);
            int err = errno;
            if (r < 0 && err == EINTR)
                continue;
            if (r < 0) {
                /* the first of the rest failed (a full buffer, no route): note it, go on */
                PyObject *f = Py_BuildValue("(ni)", base + done, err);
                if (f == NULL)
                    goto fail;
                if (failures == NULL && (failures = PyList_New(0)) == NULL) {
                    Py_DECREF(f);
                    goto fail;
                }
                int a = PyList_Append(failures, f);
                Py_DECREF(f);
                if (a < 0)
                    goto fail;
                done++;
            }
            else {
                done += (unsigned)r;
                sent += r;
            }
        }
        base += k;
    }
    Py_DECREF(items);
    if (failures == NULL)
        failures = Py_NewRef(Py_None);
    return Py_BuildValue("(nN)", sent, failures);
fail:
    Py_DECREF(items);
    Py_XDECREF(failures);
    return NULL;
}

static PyMethodDef fastct_methods[] = {
    {"bind", fastct_bind, METH_VARARGS, bind_doc},
    {"decode_into", fastct_decode_into, METH_VARARGS, decode_into_doc},
    {"sendmmsg", fastct_sendmmsg, METH_VARARGS, sendmmsg_doc},
    {NULL}
};

static struct PyModuleDef fastct_module = {
    PyModuleDef_HEAD_INIT, "meshd._fastct",
    "The conntrack event hot path in C: decode, batch read (recvmmsg), batch send (sendmmsg).",
    -1, fastct_methods,
};

PyMODINIT_FUNC
PyInit__fastct(void)
{
    if (PyType_Ready(&EventReader_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastct_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "EventReader", (PyObject *)&EventReader_Type) < 0
        || PyModule_AddIntConstant(m, "READ_OK", READ_OK) < 0
        || PyModule_AddIntConstant(m, "READ_ENOBUFS", READ_ENOBUFS) < 0
        || PyModule_AddIntConstant(m, "READ_TRUNCATED", READ_TRUNCATED) < 0
        || PyModule_AddIntConstant(m, "READ_DECODE", READ_DECODE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
