/* The caches' per-record loops in C (meshd/sync/cache.py says what they do).
 *
 * Two functions, each the exact loop of its Python twin, over the same
 * Python objects (the 256 bucket dicts, the digest, stamp and floor lists,
 * the tombstone dict), so that either implementation can run on a cache the
 * other one filled, and tests/sync/test_fastcache.py runs both on the same
 * inputs and compares every object they leave behind:
 *
 *   external_apply(records, stamp, buckets, digests, last, floor, tombs, report)
 *       -> (applied, stale, upserts or None, deletes or None)
 *       ExternalCache.apply without the tombstone limit (the caller checks it);
 *   internal_apply(final, buckets, digests, limit) -> (changed, oversized)
 *       the second loop of InternalCache.apply_events: `final` is the batch's
 *       key -> attrs or None, coalesced by the caller.
 *
 * Why C: these loops run once per record on every node (the backup's apply is
 * half of what receiving a frame costs, measured in docs/benchmarks.md), and in
 * Python each record is some forty bytecodes and four calls into zlib.
 *
 * The entry hash is digest.py's: (CRC-32(key || attrs) << 32 | Adler-32(key ||
 * attrs)) XOR len(key), chained from the key's own CRC and Adler, with zlib's
 * own functions, so it is the same on a peer that runs the pure Python.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <zlib.h>

#define NBUCKETS 256
#define STAMP_LEN 8

static uint32_t
crc_of(const unsigned char *p, Py_ssize_t n, uint32_t start)
{
    return (uint32_t)crc32((uLong)start, p, (uInt)n);
}

static uint32_t
adler_of(const unsigned char *p, Py_ssize_t n, uint32_t start)
{
    return (uint32_t)adler32((uLong)start, p, (uInt)n);
}

static uint64_t
entry_hash(const unsigned char *v, Py_ssize_t n, uint32_t ck, uint32_t ak, Py_ssize_t lk)
{
    return ((((uint64_t)crc_of(v, n, ck)) << 32) | adler_of(v, n, ak)) ^ (uint64_t)lk;
}

/* The lists the caller gives: exactly NBUCKETS long, of the right types. */
static int
check_lists(PyObject *buckets, PyObject *digests, PyObject *last, PyObject *floor)
{
    if (!PyList_CheckExact(buckets) || PyList_GET_SIZE(buckets) != NBUCKETS ||
        !PyList_CheckExact(digests) || PyList_GET_SIZE(digests) != NBUCKETS ||
        (last && (!PyList_CheckExact(last) || PyList_GET_SIZE(last) != NBUCKETS)) ||
        (floor && (!PyList_CheckExact(floor) || PyList_GET_SIZE(floor) != NBUCKETS))) {
        PyErr_SetString(PyExc_TypeError, "expected lists of 256 buckets, digests, stamps, floors");
        return -1;
    }
    for (int b = 0; b < NBUCKETS; b++)
        if (!PyDict_CheckExact(PyList_GET_ITEM(buckets, b))) {
            PyErr_SetString(PyExc_TypeError, "a bucket is not a dict");
            return -1;
        }
    return 0;
}

/* list[b] as an unsigned 64-bit integer; (uint64_t)-1 with an error set if not one */
static int
get_u64(PyObject *list, Py_ssize_t b, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(list, b));
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int
set_u64(PyObject *list, Py_ssize_t b, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (o == NULL)
        return -1;
    return PyList_SetItem(list, b, o);     /* steals o, releases the old value */
}

static int
append_pair(PyObject *list, PyObject *a, PyObject *b)
{
    PyObject *t = PyTuple_Pack(2, a, b);
    if (t == NULL)
        return -1;
    int r = PyList_Append(list, t);
    Py_DECREF(t);
    return r;
}

static PyObject *
external_apply(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *records, *buckets, *digests, *last, *floor, *tombs;
    unsigned long long stamp_arg;
    int report;
    if (!PyArg_ParseTuple(args, "OKO!O!O!O!O!p", &records, &stamp_arg, &PyList_Type, &buckets,
                          &PyList_Type, &digests, &PyList_Type, &last, &PyList_Type, &floor,
                          &PyDict_Type, &tombs, &report))
        return NULL;
    if (check_lists(buckets, digests, last, floor) < 0)
        return NULL;
    const uint64_t stamp = (uint64_t)stamp_arg;
    unsigned char sb[STAMP_LEN];
    for (int i = 0; i < STAMP_LEN; i++)
        sb[i] = (unsigned char)(stamp >> (8 * (STAMP_LEN - 1 - i)));

    PyObject *seq = PySequence_Fast(records, "records must be a sequence");
    if (seq == NULL)
        return NULL;
    PyObject *upserts = NULL, *deletes = NULL, *stamp_obj = NULL, *result = NULL;
    if (report && ((upserts = PyList_New(0)) == NULL || (deletes = PyList_New(0)) == NULL))
        goto done;
    if ((stamp_obj = PyLong_FromUnsignedLongLong(stamp)) == NULL)
        goto done;

    Py_ssize_t applied = 0, stale = 0, n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *rec = items[i], *key, *attrs;
        if (PyTuple_CheckExact(rec) && PyTuple_GET_SIZE(rec) == 2) {
            key = PyTuple_GET_ITEM(rec, 0);
            attrs = PyTuple_GET_ITEM(rec, 1);
        } else if (PyList_CheckExact(rec) && PyList_GET_SIZE(rec) == 2) {
            key = PyList_GET_ITEM(rec, 0);
            attrs = PyList_GET_ITEM(rec, 1);
        } else {
            PyErr_SetString(PyExc_TypeError, "a record is not a (key, attrs) pair");
            goto done;
        }
        if (!PyBytes_CheckExact(key) || (attrs != Py_None && !PyBytes_CheckExact(attrs))) {
            PyErr_SetString(PyExc_TypeError, "a record's key or attrs is not bytes");
            goto done;
        }
        const unsigned char *kp = (const unsigned char *)PyBytes_AS_STRING(key);
        const Py_ssize_t lk = PyBytes_GET_SIZE(key);
        const uint32_t ck = crc_of(kp, lk, 0);
        const Py_ssize_t b = ck & (NBUCKETS - 1);
        uint64_t fl, lastb, dig;
        if (get_u64(floor, b, &fl) < 0)
            goto done;
        if (stamp < fl) {
            stale++;
            continue;
        }
        PyObject *d = PyList_GET_ITEM(buckets, b);
        PyObject *old = PyDict_GetItemWithError(d, key);      /* borrowed */
        if (old == NULL && PyErr_Occurred())
            goto done;
        if (old != NULL) {
            if (!PyBytes_CheckExact(old) || PyBytes_GET_SIZE(old) < STAMP_LEN) {
                PyErr_SetString(PyExc_TypeError, "an external entry is not attrs || stamp");
                goto done;
            }
            if (memcmp(PyBytes_AS_STRING(old) + PyBytes_GET_SIZE(old) - STAMP_LEN, sb, STAMP_LEN) >= 0) {
                stale++;
                continue;
            }
        } else if (PyDict_GET_SIZE(tombs)) {
            PyObject *t = PyDict_GetItemWithError(tombs, key);
            if (t == NULL && PyErr_Occurred())
                goto done;
            if (t != NULL) {
                unsigned long long tv = PyLong_AsUnsignedLongLong(t);
                if (tv == (unsigned long long)-1 && PyErr_Occurred())
                    goto done;
                if (tv >= stamp) {
                    stale++;
                    continue;
                }
            }
        }
        Py_XINCREF(old);            /* it may leave the dict below */
        const uint32_t ak = adler_of(kp, lk, 1);
        if (get_u64(digests, b, &dig) < 0) {
            Py_XDECREF(old);
            goto done;
        }
        PyObject *old_attrs = NULL;
        if (old != NULL) {
            const Py_ssize_t ln = PyBytes_GET_SIZE(old) - STAMP_LEN;
            dig -= entry_hash((const unsigned char *)PyBytes_AS_STRING(old), ln, ck, ak, lk);
            if (report && attrs == Py_None &&
                (old_attrs = PyBytes_FromStringAndSize(PyBytes_AS_STRING(old), ln)) == NULL) {
                Py_DECREF(old);
                goto done;
            }
        }
        int bad = 0;
        if (attrs != Py_None) {
            const Py_ssize_t la = PyBytes_GET_SIZE(attrs);
            PyObject *value = PyBytes_FromStringAndSize(NULL, la + STAMP_LEN);
            if (value == NULL) {
                bad = 1;
            } else {
                memcpy(PyBytes_AS_STRING(value), PyBytes_AS_STRING(attrs), la);
                memcpy(PyBytes_AS_STRING(value) + la, sb, STAMP_LEN);
                bad = PyDict_SetItem(d, key, value) < 0;
                Py_DECREF(value);
            }
            dig += entry_hash((const unsigned char *)PyBytes_AS_STRING(attrs), la, ck, ak, lk);
            if (!bad && old == NULL && PyDict_GET_SIZE(tombs)) {
                int had = PyDict_Contains(tombs, key);
                bad = had < 0 || (had == 1 && PyDict_DelItem(tombs, key) < 0);
            }
            if (!bad && report)
                bad = append_pair(upserts, key, attrs) < 0;
        } else {
            if (old != NULL) {
                bad = PyDict_DelItem(d, key) < 0;
                if (!bad && report)
                    bad = append_pair(deletes, key, old_attrs) < 0;
            }
            /* re-insert at the end: the GC walks the tombstones in insertion order */
            if (!bad) {
                int had = PyDict_Contains(tombs, key);
                bad = had < 0 || (had == 1 && PyDict_DelItem(tombs, key) < 0);
            }
            if (!bad)
                bad = PyDict_SetItem(tombs, key, stamp_obj) < 0;
        }
        Py_XDECREF(old_attrs);
        Py_XDECREF(old);
        if (bad || set_u64(digests, b, dig) < 0 || get_u64(last, b, &lastb) < 0)
            goto done;
        if (stamp > lastb && set_u64(last, b, stamp) < 0)
            goto done;
        applied++;
    }
    result = Py_BuildValue("nnOO", applied, stale, report ? upserts : Py_None, report ? deletes : Py_None);
done:
    Py_XDECREF(stamp_obj);
    Py_XDECREF(upserts);
    Py_XDECREF(deletes);
    Py_DECREF(seq);
    return result;
}

static PyObject *
internal_apply(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *final, *buckets, *digests;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O!O!O!n", &PyDict_Type, &final, &PyList_Type, &buckets,
                          &PyList_Type, &digests, &limit))
        return NULL;
    if (check_lists(buckets, digests, NULL, NULL) < 0)
        return NULL;
    PyObject *changed = PyList_New(0);
    if (changed == NULL)
        return NULL;
    Py_ssize_t pos = 0, oversized = 0;
    PyObject *key, *value;
    while (PyDict_Next(final, &pos, &key, &value)) {
        if (!PyBytes_CheckExact(key) || (value != Py_None && !PyBytes_CheckExact(value))) {
            PyErr_SetString(PyExc_TypeError, "a change's key or attrs is not bytes");
            goto fail;
        }
        const unsigned char *kp = (const unsigned char *)PyBytes_AS_STRING(key);
        const Py_ssize_t lk = PyBytes_GET_SIZE(key);
        const uint32_t ck = crc_of(kp, lk, 0);
        const Py_ssize_t b = ck & (NBUCKETS - 1);
        PyObject *d = PyList_GET_ITEM(buckets, b);
        PyObject *old = PyDict_GetItemWithError(d, key);
        if (old == NULL && PyErr_Occurred())
            goto fail;
        if (old != NULL && !PyBytes_CheckExact(old)) {
            PyErr_SetString(PyExc_TypeError, "an internal entry is not bytes");
            goto fail;
        }
        PyObject *new = value;
        if (new == Py_None) {
            if (old == NULL)
                continue;
        } else if (old != NULL && PyBytes_GET_SIZE(old) == PyBytes_GET_SIZE(new) &&
                   memcmp(PyBytes_AS_STRING(old), PyBytes_AS_STRING(new), PyBytes_GET_SIZE(new)) == 0) {
            continue;
        } else if (lk + PyBytes_GET_SIZE(new) > limit) {
            /* cannot be carried by any frame: out of the cache and the digests */
            oversized++;
            if (old == NULL)
                continue;
            new = Py_None;
        }
        Py_XINCREF(old);
        int bad;
        if (new == Py_None)
            bad = PyDict_DelItem(d, key) < 0;
        else
            bad = PyDict_SetItem(d, key, new) < 0;
        uint64_t dig = 0;
        if (!bad)
            bad = get_u64(digests, b, &dig) < 0;
        if (!bad) {
            const uint32_t ak = adler_of(kp, lk, 1);
            if (old != NULL)
                dig -= entry_hash((const unsigned char *)PyBytes_AS_STRING(old), PyBytes_GET_SIZE(old), ck, ak, lk);
            if (new != Py_None)
                dig += entry_hash((const unsigned char *)PyBytes_AS_STRING(new), PyBytes_GET_SIZE(new), ck, ak, lk);
            bad = set_u64(digests, b, dig) < 0 || append_pair(changed, key, new) < 0;
        }
        Py_XDECREF(old);
        if (bad)
            goto fail;
    }
    return Py_BuildValue("Nn", changed, oversized);
fail:
    Py_DECREF(changed);
    return NULL;
}

static PyMethodDef methods[] = {
    {"external_apply", external_apply, METH_VARARGS,
     "external_apply(records, stamp, buckets, digests, last, floor, tombs, report)"
     " -> (applied, stale, upserts, deletes): ExternalCache.apply's loop"},
    {"internal_apply", internal_apply, METH_VARARGS,
     "internal_apply(final, buckets, digests, limit) -> (changed, oversized):"
     " InternalCache.apply_events's second loop"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "meshd._fastcache",
    "The caches' per-record loops in C (meshd/sync/cache.py).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fastcache(void)
{
    return PyModule_Create(&module);
}
