/* The hot loop of `xdpcap merge`: a k-way merge of little-endian enhanced packet blocks.
 *
 * Python keeps the control plane (orchestrator/merge.py with the reader in
 * agent/pcapng_reader.py): it opens the files, reads chunks, parses section headers,
 * interface descriptions and statistics, renames interfaces and reports damage. This
 * module only moves packets. Each input hands it
 *   - `raw`: the reader's current chunk and the offset of the next unread block in it,
 *     with a table per local interface id: (out id, factor, addend), meaning
 *     ts_ns = raw_ts * factor + addend and the block is normalised by rewriting its
 *     interface id and timestamp in the copy written out;
 *   - `side`: packet blocks the Python reader already normalised (big-endian sections,
 *     classic pcap records, unusual resolutions), delivered before `raw`.
 * The merge takes the input with the smallest (timestamp, input index) - the order
 * mergecap writes - copies its block into the output and reads that input's next block.
 * Whenever the next block of an input is anything it does not fully trust (another
 * block type, an incomplete block, inconsistent lengths, an unknown interface, a
 * timestamp that does not fit 64 bits in ns) it stops before taking anything else and
 * returns NEED with that input: Python handles the block and calls `run()` again. A
 * packet earlier than the input's previous one stops it with DISORDER: the caller then
 * redoes the merge with the windowed reordering of the Python path.
 *
 * Lengths come from files and are never trusted: every block is checked against the
 * bytes present before any of it is read, in 64-bit arithmetic.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define BT_EPB 6u
#define EPB_MIN_BYTES 32u /* type, length, if id, ts hi, ts lo, cap, orig; trailer */
#define DEFAULT_OUT_BYTES (1u << 20)

enum status { ST_DONE = 0, ST_FULL = 1, ST_NEED = 2, ST_DISORDER = 3 };
enum head { H_OK, H_NEED, H_END, H_DISORDER, H_BADSIDE };

typedef struct {
    uint32_t out_id;
    uint64_t factor;
    int64_t addend;
    int usable;
} Iface;

typedef struct {
    Py_buffer raw;
    int has_raw;
    Py_ssize_t raw_pos;
    Py_buffer side;
    int has_side;
    Py_ssize_t side_pos;
    Iface *table;
    Py_ssize_t ntable;
    int ended; /* no raw buffer any more: the input ends with its side blocks */
    int done;
    int in_heap;
    /* The loaded head: the next block to write. */
    const uint8_t *src;
    uint32_t blen;
    int from_side;
    uint32_t out_id;
    uint64_t ts;
    int any;          /* a packet was loaded: last_ts is valid */
    uint64_t last_ts; /* the largest (= last) timestamp loaded */
    unsigned long long packets;
} Input;

typedef struct {
    PyObject_HEAD
    Input *inputs;
    Py_ssize_t n;
    Py_ssize_t *heap;
    Py_ssize_t heap_len;
    Py_ssize_t out_bytes;
} Merger;

static inline uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* An enhanced packet block whose lengths agree with each other and with the `left`
 * bytes present; its length, else 0. */
static uint32_t checked_epb(const uint8_t *p, size_t left)
{
    if (left < EPB_MIN_BYTES || get_le32(p) != BT_EPB)
        return 0;
    uint32_t blen = get_le32(p + 4);
    uint64_t cap = get_le32(p + 20);
    if (blen < EPB_MIN_BYTES || (blen & 3u) || (uint64_t)blen > left || cap + EPB_MIN_BYTES > blen)
        return 0;
    if (get_le32(p + blen - 4) != blen)
        return 0;
    return blen;
}

/* raw * factor + addend when it lies in [0, 2^64); else 0 is returned. */
static int scale_ts(uint64_t raw, const Iface *iface, uint64_t *ts)
{
    uint64_t scaled;
    if (__builtin_mul_overflow(raw, iface->factor, &scaled))
        return 0;
    if (iface->addend >= 0)
        return !__builtin_add_overflow(scaled, (uint64_t)iface->addend, ts);
    /* -(addend + 1) + 1 avoids negating INT64_MIN. */
    uint64_t minus = (uint64_t)(-(iface->addend + 1)) + 1u;
    if (scaled < minus)
        return 0; /* before the epoch: Python clamps it */
    *ts = scaled - minus;
    return 1;
}

static void release_side(Input *in)
{
    if (in->has_side) {
        PyBuffer_Release(&in->side);
        in->has_side = 0;
    }
    in->side_pos = 0;
}

static void release_raw(Input *in)
{
    if (in->has_raw) {
        PyBuffer_Release(&in->raw);
        in->has_raw = 0;
    }
    in->raw_pos = 0;
    PyMem_Free(in->table);
    in->table = NULL;
    in->ntable = 0;
}

static enum head load_head(Input *in)
{
    uint64_t ts;
    if (in->has_side) {
        size_t left = (size_t)(in->side.len - in->side_pos);
        if (left > 0) {
            const uint8_t *p = (const uint8_t *)in->side.buf + in->side_pos;
            uint32_t blen = checked_epb(p, left);
            if (!blen)
                return H_BADSIDE;
            ts = (uint64_t)get_le32(p + 12) << 32 | get_le32(p + 16);
            in->src = p;
            in->blen = blen;
            in->from_side = 1;
            goto loaded;
        }
        release_side(in);
    }
    if (in->ended)
        return H_END;
    if (!in->has_raw || in->ntable == 0)
        return H_NEED;
    {
        const uint8_t *p = (const uint8_t *)in->raw.buf + in->raw_pos;
        uint32_t blen = checked_epb(p, (size_t)(in->raw.len - in->raw_pos));
        if (!blen)
            return H_NEED;
        uint32_t local = get_le32(p + 8);
        if ((Py_ssize_t)local >= in->ntable || !in->table[local].usable)
            return H_NEED;
        uint64_t raw_ts = (uint64_t)get_le32(p + 12) << 32 | get_le32(p + 16);
        if (!scale_ts(raw_ts, &in->table[local], &ts))
            return H_NEED;
        in->src = p;
        in->blen = blen;
        in->from_side = 0;
        in->out_id = in->table[local].out_id;
    }
loaded:
    if (in->any && ts < in->last_ts)
        return H_DISORDER;
    in->ts = ts;
    in->last_ts = ts;
    in->any = 1;
    return H_OK;
}

/* ------------------------------------------------------------------ the heap */
static inline int before(const Merger *m, Py_ssize_t a, Py_ssize_t b)
{
    uint64_t ta = m->inputs[a].ts, tb = m->inputs[b].ts;
    return ta < tb || (ta == tb && a < b);
}

static void sift_down(Merger *m, Py_ssize_t at)
{
    Py_ssize_t *h = m->heap, len = m->heap_len, item = h[at];
    for (;;) {
        Py_ssize_t child = 2 * at + 1;
        if (child >= len)
            break;
        if (child + 1 < len && before(m, h[child + 1], h[child]))
            child++;
        if (!before(m, h[child], item))
            break;
        h[at] = h[child];
        at = child;
    }
    h[at] = item;
}

static void heap_push(Merger *m, Py_ssize_t index)
{
    Py_ssize_t *h = m->heap, at = m->heap_len++;
    while (at > 0) {
        Py_ssize_t parent = (at - 1) / 2;
        if (!before(m, index, h[parent]))
            break;
        h[at] = h[parent];
        at = parent;
    }
    h[at] = index;
    m->inputs[index].in_heap = 1;
}

static void heap_pop_root(Merger *m)
{
    m->inputs[m->heap[0]].in_heap = 0;
    m->heap[0] = m->heap[--m->heap_len];
    if (m->heap_len)
        sift_down(m, 0);
}

/* ------------------------------------------------------------------- methods */
static int Merger_init(Merger *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"inputs", "out_bytes", NULL};
    Py_ssize_t n, out_bytes = DEFAULT_OUT_BYTES;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|n", kwlist, &n, &out_bytes))
        return -1;
    if (n < 0 || n > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(Input)) {
        PyErr_SetString(PyExc_ValueError, "inputs out of range");
        return -1;
    }
    if (out_bytes < (Py_ssize_t)EPB_MIN_BYTES) {
        PyErr_SetString(PyExc_ValueError, "out_bytes too small");
        return -1;
    }
    if (self->inputs) {
        PyErr_SetString(PyExc_RuntimeError, "Merger already initialised");
        return -1;
    }
    self->inputs = PyMem_Calloc((size_t)n ? (size_t)n : 1, sizeof(Input));
    self->heap = PyMem_Calloc((size_t)n ? (size_t)n : 1, sizeof(Py_ssize_t));
    if (!self->inputs || !self->heap) {
        PyErr_NoMemory();
        return -1;
    }
    self->n = n;
    self->heap_len = 0;
    self->out_bytes = out_bytes;
    return 0;
}

static void Merger_dealloc(Merger *self)
{
    if (self->inputs) {
        for (Py_ssize_t i = 0; i < self->n; i++) {
            release_side(&self->inputs[i]);
            release_raw(&self->inputs[i]);
        }
    }
    PyMem_Free(self->inputs);
    PyMem_Free(self->heap);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Input *get_input(Merger *self, Py_ssize_t i)
{
    if (!self->inputs) {
        PyErr_SetString(PyExc_RuntimeError, "Merger not initialised");
        return NULL;
    }
    if (i < 0 || i >= self->n) {
        PyErr_Format(PyExc_IndexError, "no input %zd", i);
        return NULL;
    }
    return &self->inputs[i];
}

/* One table entry: None, or (out id, factor, addend); values that do not fit leave the
 * interface to Python. */
static int parse_iface(PyObject *entry, Iface *iface)
{
    iface->usable = 0;
    if (entry == Py_None)
        return 0;
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
        PyErr_SetString(PyExc_TypeError, "table entries are None or (out_id, factor, addend)");
        return -1;
    }
    int overflow = 0;
    unsigned long long out_id = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 0));
    if (out_id == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    unsigned long long factor = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 1));
    if (factor == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    long long addend = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(entry, 2), &overflow);
    if (addend == -1 && PyErr_Occurred())
        return -1;
    if (overflow || out_id > UINT32_MAX || factor == 0)
        return 0;
    iface->out_id = (uint32_t)out_id;
    iface->factor = factor;
    iface->addend = addend;
    iface->usable = 1;
    return 0;
}

PyDoc_STRVAR(set_input_doc,
"set_input(i, raw, pos, table, side=None)\n--\n\n"
"Give input `i` its reader's chunk `raw` (None: the input ends after `side`) with the\n"
"next block at `pos`, the fast table of the current section (None: no block of `raw`\n"
"may be read here) and `side`, normalised packet blocks to deliver first. Allowed only\n"
"while the input holds nothing unread: at the start and when `run()` named it.");

static PyObject *Merger_set_input(Merger *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"i", "raw", "pos", "table", "side", NULL};
    Py_ssize_t i, pos;
    PyObject *raw, *table, *side = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOnO|O", kwlist, &i, &raw, &pos, &table,
                                     &side))
        return NULL;
    Input *in = get_input(self, i);
    if (!in)
        return NULL;
    if (in->in_heap || (in->has_side && in->side_pos < in->side.len) || in->done) {
        PyErr_Format(PyExc_RuntimeError, "input %zd still has packets to merge", i);
        return NULL;
    }
    Py_buffer raw_view, side_view;
    int has_raw = 0, has_side = 0;
    Iface *parsed = NULL;
    Py_ssize_t ntable = 0;
    if (raw != Py_None) {
        if (PyObject_GetBuffer(raw, &raw_view, PyBUF_SIMPLE) < 0)
            return NULL;
        has_raw = 1;
        if (pos < 0 || pos > raw_view.len) {
            PyErr_Format(PyExc_ValueError, "pos %zd outside the buffer", pos);
            goto fail;
        }
        if (table != Py_None) {
            PyObject *seq = PySequence_Fast(table, "table must be a sequence or None");
            if (!seq)
                goto fail;
            ntable = PySequence_Fast_GET_SIZE(seq);
            parsed = PyMem_Calloc((size_t)ntable ? (size_t)ntable : 1, sizeof(Iface));
            if (!parsed) {
                Py_DECREF(seq);
                PyErr_NoMemory();
                goto fail;
            }
            for (Py_ssize_t k = 0; k < ntable; k++) {
                if (parse_iface(PySequence_Fast_GET_ITEM(seq, k), &parsed[k]) < 0) {
                    Py_DECREF(seq);
                    goto fail;
                }
            }
            Py_DECREF(seq);
        }
    }
    if (side != Py_None) {
        if (PyObject_GetBuffer(side, &side_view, PyBUF_SIMPLE) < 0)
            goto fail;
        has_side = 1;
    }
    release_side(in);
    release_raw(in);
    if (has_raw) {
        in->raw = raw_view;
        in->has_raw = 1;
        in->raw_pos = pos;
        in->table = parsed;
        in->ntable = ntable;
    }
    in->ended = !has_raw;
    if (has_side) {
        in->side = side_view;
        in->has_side = 1;
    }
    Py_RETURN_NONE;
fail:
    PyMem_Free(parsed);
    if (has_raw)
        PyBuffer_Release(&raw_view);
    return NULL;
}

PyDoc_STRVAR(state_doc,
"state(i) -> (pos, last_ts, packets)\n--\n\n"
"Input `i`'s offset of the next unread block of `raw`, the timestamp of its last packet\n"
"(None before the first) and the packets of it written so far.");

static PyObject *Merger_state(Merger *self, PyObject *arg)
{
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    Input *in = get_input(self, i);
    if (!in)
        return NULL;
    if (in->any)
        return Py_BuildValue("nKK", in->raw_pos, (unsigned long long)in->last_ts, in->packets);
    return Py_BuildValue("nOK", in->raw_pos, Py_None, in->packets);
}

PyDoc_STRVAR(run_doc,
"run() -> (out, packets, status, who)\n--\n\n"
"Merge until the output holds about `out_bytes`, an input needs Python, or all are done.\n"
"`out` is the merged blocks (`packets` of them); `status` is DONE, FULL (call again),\n"
"NEED (handle input `who`, then set_input and call again) or DISORDER (input `who`\n"
"went back in time; nothing of the packet was written).");

static PyObject *finish_run(PyObject *out, Py_ssize_t out_len, unsigned long long packets,
                            int status, Py_ssize_t who)
{
    if (_PyBytes_Resize(&out, out_len) < 0)
        return NULL;
    PyObject *result = Py_BuildValue("NKin", out, packets, status, who);
    return result;
}

static PyObject *Merger_run(Merger *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->inputs) {
        PyErr_SetString(PyExc_RuntimeError, "Merger not initialised");
        return NULL;
    }
    Py_ssize_t cap = self->out_bytes, out_len = 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
    if (!out)
        return NULL;
    unsigned long long packets = 0;

    /* Every open input needs its head before anything can be written. */
    for (Py_ssize_t i = 0; i < self->n; i++) {
        Input *in = &self->inputs[i];
        if (in->done || in->in_heap)
            continue;
        switch (load_head(in)) {
        case H_OK:
            heap_push(self, i);
            break;
        case H_END:
            in->done = 1;
            release_side(in);
            release_raw(in);
            break;
        case H_NEED:
            return finish_run(out, 0, 0, ST_NEED, i);
        case H_DISORDER:
            return finish_run(out, 0, 0, ST_DISORDER, i);
        case H_BADSIDE:
            Py_DECREF(out);
            PyErr_Format(PyExc_ValueError, "input %zd: side buffer holds a bad block", i);
            return NULL;
        }
    }

    while (self->heap_len) {
        Py_ssize_t i = self->heap[0];
        Input *in = &self->inputs[i];
        uint32_t blen = in->blen;
        if ((Py_ssize_t)blen > cap - out_len) {
            if (out_len)
                return finish_run(out, out_len, packets, ST_FULL, -1);
            /* One block larger than the whole output: give it room of its own. */
            if (_PyBytes_Resize(&out, (Py_ssize_t)blen) < 0)
                return NULL;
            cap = (Py_ssize_t)blen;
        }
        uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out) + out_len;
        memcpy(dst, in->src, blen);
        if (!in->from_side) {
            put_le32(dst + 8, in->out_id);
            put_le32(dst + 12, (uint32_t)(in->ts >> 32));
            put_le32(dst + 16, (uint32_t)in->ts);
            in->raw_pos += blen;
        } else {
            in->side_pos += blen;
        }
        out_len += blen;
        in->packets++;
        packets++;

        switch (load_head(in)) {
        case H_OK:
            sift_down(self, 0);
            break;
        case H_END:
            heap_pop_root(self);
            in->done = 1;
            release_side(in);
            release_raw(in);
            break;
        case H_NEED:
            heap_pop_root(self);
            return finish_run(out, out_len, packets, ST_NEED, i);
        case H_DISORDER:
            heap_pop_root(self);
            return finish_run(out, out_len, packets, ST_DISORDER, i);
        case H_BADSIDE:
            Py_DECREF(out);
            PyErr_Format(PyExc_ValueError, "input %zd: side buffer holds a bad block", i);
            return NULL;
        }
        if (out_len >= self->out_bytes)
            return finish_run(out, out_len, packets, ST_FULL, -1);
    }
    return finish_run(out, out_len, packets, ST_DONE, -1);
}

static PyMethodDef Merger_methods[] = {
    {"set_input", (PyCFunction)(void (*)(void))Merger_set_input, METH_VARARGS | METH_KEYWORDS,
     set_input_doc},
    {"state", (PyCFunction)Merger_state, METH_O, state_doc},
    {"run", (PyCFunction)Merger_run, METH_NOARGS, run_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Merger_doc,
"Merger(inputs, out_bytes=1 MiB): k-way merge of normalised enhanced packet blocks.");

static PyTypeObject MergerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xdpcap.orchestrator._fastmerge.Merger",
    .tp_basicsize = sizeof(Merger),
    .tp_dealloc = (destructor)Merger_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Merger_doc,
    .tp_methods = Merger_methods,
    .tp_init = (initproc)Merger_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef fastmerge_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "xdpcap.orchestrator._fastmerge",
    .m_doc = "The C hot loop of xdpcap merge (see orchestrator/merge.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastmerge(void)
{
    if (PyType_Ready(&MergerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastmerge_module);
    if (!m)
        return NULL;
    Py_INCREF(&MergerType);
    if (PyModule_AddObject(m, "Merger", (PyObject *)&MergerType) < 0 ||
        PyModule_AddIntConstant(m, "DONE", ST_DONE) < 0 ||
        PyModule_AddIntConstant(m, "FULL", ST_FULL) < 0 ||
        PyModule_AddIntConstant(m, "NEED", ST_NEED) < 0 ||
        PyModule_AddIntConstant(m, "DISORDER", ST_DISORDER) < 0) {
        Py_DECREF(&MergerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
