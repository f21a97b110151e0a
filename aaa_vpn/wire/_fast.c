/*
 * aaa_vpn.wire._fast: the compiled hot path of the RADIUS codec.
 *
 *   RenewalMemo    the renewal memo of aaa_vpn/wire/memo.py (its Python class
 *                  PyRenewalMemo is the specification; tests compare the two
 *                  byte for byte)
 *   render         ProfileTemplate.render's loop (aaa_vpn/wire/radius_profile.py):
 *                  fixed parts copied, lifetimes written, keys salt-encrypted
 *                  (RFC 2868 section 3.5)
 *   salt_encrypt   one salt-encrypted value (aaa_vpn.wire.radius.salt_encrypt)
 *   md5, hmac_md5  MD5 (RFC 1321) and HMAC-MD5 (RFC 2104), for the tests
 *
 * MD5 is written here from RFC 1321's description so that the module needs
 * nothing but the Python headers to build.
 *
 * Copyright: the aaa_vpn authors. License: GPL-2.0-or-later.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- MD5 (RFC 1321) */

typedef struct {
    uint32_t state[4];
    uint64_t length; /* octets hashed so far */
    uint8_t buffer[64];
    size_t used;
} md5_t;

static const uint32_t MD5_T[64] = {
    0xd76aa478u, 0xe8c7b756u, 0x242070dbu, 0xc1bdceeeu,
    0xf57c0fafu, 0x4787c62au, 0xa8304613u, 0xfd469501u,
    0x698098d8u, 0x8b44f7afu, 0xffff5bb1u, 0x895cd7beu,
    0x6b901122u, 0xfd987193u, 0xa679438eu, 0x49b40821u,
    0xf61e2562u, 0xc040b340u, 0x265e5a51u, 0xe9b6c7aau,
    0xd62f105du, 0x02441453u, 0xd8a1e681u, 0xe7d3fbc8u,
    0x21e1cde6u, 0xc33707d6u, 0xf4d50d87u, 0x455a14edu,
    0xa9e3e905u, 0xfcefa3f8u, 0x676f02d9u, 0x8d2a4c8au,
    0xfffa3942u, 0x8771f681u, 0x6d9d6122u, 0xfde5380cu,
    0xa4beea44u, 0x4bdecfa9u, 0xf6bb4b60u, 0xbebfbc70u,
    0x289b7ec6u, 0xeaa127fau, 0xd4ef3085u, 0x04881d05u,
    0xd9d4d039u, 0xe6db99e5u, 0x1fa27cf8u, 0xc4ac5665u,
    0xf4292244u, 0x432aff97u, 0xab9423a7u, 0xfc93a039u,
    0x655b59c3u, 0x8f0ccc92u, 0xffeff47du, 0x85845dd1u,
    0x6fa87e4fu, 0xfe2ce6e0u, 0xa3014314u, 0x4e0811a1u,
    0xf7537e82u, 0xbd3af235u, 0x2ad7d2bbu, 0xeb86d391u,
};

/* Per round: the left rotations of its four steps, repeated. */
static const uint8_t MD5_S[4][4] = {{7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};

static inline uint32_t rotl(uint32_t x, unsigned n) { return (x << n) | (x >> (32 - n)); }

static void md5_block(uint32_t state[4], const uint8_t block[64])
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint32_t)block[4 * i] | ((uint32_t)block[4 * i + 1] << 8) | ((uint32_t)block[4 * i + 2] << 16) |
               ((uint32_t)block[4 * i + 3] << 24);
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        switch (i >> 4) {
        case 0: f = (b & c) | (~b & d); g = i; break;              /* F */
        case 1: f = (d & b) | (~d & c); g = (5 * i + 1) & 15; break; /* G */
        case 2: f = b ^ c ^ d; g = (3 * i + 5) & 15; break;         /* H */
        default: f = c ^ (b | ~d); g = (7 * i) & 15; break;         /* I */
        }
        uint32_t next = b + rotl(a + f + MD5_T[i] + m[g], MD5_S[i >> 4][i & 3]);
        a = d;
        d = c;
        c = b;
        b = next;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
}

static void md5_init(md5_t *h)
{
    h->state[0] = 0x67452301u;
    h->state[1] = 0xefcdab89u;
    h->state[2] = 0x98badcfeu;
    h->state[3] = 0x10325476u;
    h->length = 0;
    h->used = 0;
}

static void md5_update(md5_t *h, const uint8_t *data, size_t n)
{
    h->length += n;
    if (h->used) {
        size_t take = 64 - h->used < n ? 64 - h->used : n;
        memcpy(h->buffer + h->used, data, take);
        h->used += take;
        data += take;
        n -= take;
        if (h->used < 64)
            return;
        md5_block(h->state, h->buffer);
        h->used = 0;
    }
    while (n >= 64) {
        md5_block(h->state, data);
        data += 64;
        n -= 64;
    }
    memcpy(h->buffer, data, n);
    h->used = n;
}

static void md5_final(md5_t *h, uint8_t out[16])
{
    uint64_t bits = h->length * 8;
    uint8_t pad = 0x80;
    md5_update(h, &pad, 1);
    static const uint8_t zeros[64] = {0};
    size_t fill = (h->used <= 56) ? 56 - h->used : 120 - h->used;
    md5_update(h, zeros, fill);
    uint8_t length[8];
    for (int i = 0; i < 8; i++)
        length[i] = (uint8_t)(bits >> (8 * i));
    md5_update(h, length, 8);
    for (int i = 0; i < 4; i++) {
        out[4 * i] = (uint8_t)h->state[i];
        out[4 * i + 1] = (uint8_t)(h->state[i] >> 8);
        out[4 * i + 2] = (uint8_t)(h->state[i] >> 16);
        out[4 * i + 3] = (uint8_t)(h->state[i] >> 24);
    }
}

/* ---------------------------------------------------------------- HMAC-MD5 (RFC 2104) */

typedef struct {
    md5_t inner, outer;
} hmac_t;

static void hmac_init(hmac_t *h, const uint8_t *key, size_t key_length)
{
    uint8_t k[64] = {0};
    if (key_length > 64) {
        md5_t hk;
        md5_init(&hk);
        md5_update(&hk, key, key_length);
        md5_final(&hk, k);
    } else {
        memcpy(k, key, key_length);
    }
    uint8_t pad[64];
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x36;
    md5_init(&h->inner);
    md5_update(&h->inner, pad, 64);
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x5c;
    md5_init(&h->outer);
    md5_update(&h->outer, pad, 64);
}

static void hmac_final(hmac_t *h, uint8_t out[16])
{
    uint8_t inner[16];
    md5_final(&h->inner, inner);
    md5_update(&h->outer, inner, 16);
    md5_final(&h->outer, out);
}

static int equal16(const uint8_t *a, const uint8_t *b)
{
    uint8_t diff = 0; /* constant time */
    for (int i = 0; i < 16; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

/* ---------------------------------------------------------------- salt encryption (RFC 2868 section 3.5) */

/* Writes salt || ciphertext of value (length octet, zero padding) to out,
 * which has room for 2 + 16 * ceil((n + 1) / 16) octets; returns that length. */
static size_t salt_encrypt_into(uint8_t *out, const uint8_t *value, size_t n, const uint8_t *secret, size_t secret_n,
                                const uint8_t *authenticator, uint16_t salt)
{
    size_t padded = ((n + 1 + 15) / 16) * 16;
    uint8_t plain[256] = {0};
    plain[0] = (uint8_t)n;
    memcpy(plain + 1, value, n);
    out[0] = (uint8_t)(salt >> 8);
    out[1] = (uint8_t)salt;
    md5_t keyed;
    md5_init(&keyed);
    md5_update(&keyed, secret, secret_n);
    const uint8_t *chain = authenticator;
    size_t chain_n = 16;
    uint8_t first[18];
    memcpy(first, authenticator, 16);
    memcpy(first + 16, out, 2);
    chain = first;
    chain_n = 18;
    for (size_t i = 0; i < padded; i += 16) {
        md5_t h = keyed;
        uint8_t b[16];
        md5_update(&h, chain, chain_n);
        md5_final(&h, b);
        for (int j = 0; j < 16; j++)
            out[2 + i + j] = plain[i + j] ^ b[j];
        chain = out + 2 + i;
        chain_n = 16;
    }
    return 2 + padded;
}

static PyObject *py_salt_encrypt(PyObject *self, PyObject *args)
{
    Py_buffer value, secret, authenticator;
    unsigned int salt;
    if (!PyArg_ParseTuple(args, "y*y*y*I", &value, &secret, &authenticator, &salt))
        return NULL;
    PyObject *result = NULL;
    if (value.len > 239 || authenticator.len != 16 || !(salt & 0x8000) || salt > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "value of 0..239 octets, a 16-octet authenticator, a salt with its MSB set");
    } else {
        uint8_t out[2 + 240];
        size_t n = salt_encrypt_into(out, value.buf, (size_t)value.len, secret.buf, (size_t)secret.len,
                                     authenticator.buf, (uint16_t)salt);
        result = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)n);
    }
    PyBuffer_Release(&value);
    PyBuffer_Release(&secret);
    PyBuffer_Release(&authenticator);
    return result;
}

static PyObject *py_md5(PyObject *self, PyObject *args)
{
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    md5_t h;
    uint8_t out[16];
    md5_init(&h);
    md5_update(&h, data.buf, (size_t)data.len);
    md5_final(&h, out);
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)out, 16);
}

static PyObject *py_hmac_md5(PyObject *self, PyObject *args)
{
    Py_buffer key, data;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &data))
        return NULL;
    hmac_t h;
    uint8_t out[16];
    hmac_init(&h, key.buf, (size_t)key.len);
    md5_update(&h.inner, data.buf, (size_t)data.len);
    hmac_final(&h, out);
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)out, 16);
}

/* ---------------------------------------------------------------- render */

/* render(parts, lifetime, secret, authenticator, salt_base) -> bytes
 *
 * parts: a tuple of (kind, head, value) with kind 0 = fixed (head is the
 * whole attribute), 1 = lifetime (head, then 4 octets of lifetime), 2 = key
 * (head, then salt || ciphertext of value). Salts: 0x8000 | (salt_base + k)
 * mod 0x8000 for the k-th key, as ProfileTemplate.render. */
static PyObject *py_render(PyObject *self, PyObject *args)
{
    PyObject *parts;
    unsigned long long lifetime;
    Py_buffer secret, authenticator;
    unsigned int salt_base;
    if (!PyArg_ParseTuple(args, "O!Ky*y*I", &PyTuple_Type, &parts, &lifetime, &secret, &authenticator, &salt_base))
        return NULL;
    PyObject *result = NULL;
    if (authenticator.len != 16 || lifetime > 0xFFFFFFFFull) {
        PyErr_SetString(PyExc_ValueError, "a 16-octet authenticator and a 32-bit lifetime");
        goto done;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(parts), total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PyTuple_GET_ITEM(parts, i);
        if (!PyTuple_Check(part) || PyTuple_GET_SIZE(part) != 3) {
            PyErr_SetString(PyExc_TypeError, "a part is (kind, head, value)");
            goto done;
        }
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(part, 0));
        PyObject *head = PyTuple_GET_ITEM(part, 1), *value = PyTuple_GET_ITEM(part, 2);
        if (!PyBytes_Check(head) || !PyBytes_Check(value) || kind < 0 || kind > 2) {
            PyErr_SetString(PyExc_TypeError, "a part is (0|1|2, bytes, bytes)");
            goto done;
        }
        total += PyBytes_GET_SIZE(head);
        if (kind == 1)
            total += 4;
        else if (kind == 2) {
            Py_ssize_t n = PyBytes_GET_SIZE(value);
            if (n > 239) {
                PyErr_SetString(PyExc_ValueError, "a key of more than 239 octets");
                goto done;
            }
            total += 2 + ((n + 1 + 15) / 16) * 16;
        }
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL)
        goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    unsigned keys = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PyTuple_GET_ITEM(parts, i);
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(part, 0));
        PyObject *head = PyTuple_GET_ITEM(part, 1), *value = PyTuple_GET_ITEM(part, 2);
        Py_ssize_t head_n = PyBytes_GET_SIZE(head);
        memcpy(out, PyBytes_AS_STRING(head), (size_t)head_n);
        out += head_n;
        if (kind == 1) {
            out[0] = (uint8_t)(lifetime >> 24);
            out[1] = (uint8_t)(lifetime >> 16);
            out[2] = (uint8_t)(lifetime >> 8);
            out[3] = (uint8_t)lifetime;
            out += 4;
        } else if (kind == 2) {
            uint16_t salt = (uint16_t)(0x8000u | ((salt_base + keys) & 0x7FFFu));
            keys++;
            out += salt_encrypt_into(out, (const uint8_t *)PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value),
                                     secret.buf, (size_t)secret.len, authenticator.buf, salt);
        }
    }
done:
    PyBuffer_Release(&secret);
    PyBuffer_Release(&authenticator);
    return result;
}

/* ---------------------------------------------------------------- the renewal memo */

typedef struct {
    PyObject_HEAD
    PyObject *secret;        /* bytes */
    PyObject *mn_aaa_secret; /* bytes */
    PyObject *attributes;    /* bytes */
    Py_ssize_t slots[8];
    int slot_count;
    int require_ma;
    double valid_until;
    double expires;
    Py_ssize_t mark_slot; /* -1: not bound to a session mark */
    unsigned long long mark_stamp;
} MemoEntry;

static void entry_dealloc(MemoEntry *e)
{
    Py_XDECREF(e->secret);
    Py_XDECREF(e->mn_aaa_secret);
    Py_XDECREF(e->attributes);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyTypeObject MemoEntryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aaa_vpn.wire._fast.MemoEntry",
    .tp_basicsize = sizeof(MemoEntry),
    .tp_dealloc = (destructor)entry_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One remembered answer (no Python interface).",
};

typedef struct {
    PyObject_HEAD
    PyObject *entries; /* dict: key bytes -> MemoEntry */
    Py_ssize_t limit;
    Py_ssize_t answered;
    Py_buffer marks;  /* the session marks (aaa_vpn/store/marks.py), if given */
    int has_marks;
    Py_ssize_t mark_count;
} RenewalMemo;

static void memo_release_marks(RenewalMemo *self)
{
    if (self->has_marks) {
        PyBuffer_Release(&self->marks);
        self->has_marks = 0;
        self->mark_count = 0;
    }
}

static int memo_init(RenewalMemo *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"limit", "marks", NULL};
    Py_ssize_t limit = 100000;
    PyObject *marks = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nO", names, &limit, &marks))
        return -1;
    memo_release_marks(self);
    if (marks != Py_None) {
        if (PyObject_GetBuffer(marks, &self->marks, PyBUF_SIMPLE) < 0)
            return -1;
        self->has_marks = 1;
        if (self->marks.len % 8 != 0 || ((uintptr_t)self->marks.buf % 8) != 0) {
            memo_release_marks(self);
            PyErr_SetString(PyExc_ValueError, "the marks are 8-octet words, aligned");
            return -1;
        }
        self->mark_count = self->marks.len / 8;
    }
    Py_XSETREF(self->entries, PyDict_New());
    if (self->entries == NULL)
        return -1;
    self->limit = limit;
    self->answered = 0;
    return 0;
}

static void memo_dealloc(RenewalMemo *self)
{
    Py_XDECREF(self->entries);
    memo_release_marks(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *memo_remember(RenewalMemo *self, PyObject *args)
{
    PyObject *key, *secret, *mn_aaa_secret, *attributes, *slots;
    int require_ma;
    double valid_until, expires;
    Py_ssize_t mark_slot = -1;
    unsigned long long mark_stamp = 0;
    if (!PyArg_ParseTuple(args, "SSSSOpdd|nK", &key, &secret, &mn_aaa_secret, &attributes, &slots, &require_ma,
                          &valid_until, &expires, &mark_slot, &mark_stamp))
        return NULL;
    if (mark_slot < -1 || mark_slot >= self->mark_count) {
        PyErr_SetString(PyExc_ValueError, "the mark slot is not one of the marks");
        return NULL;
    }
    PyObject *sequence = PySequence_Fast(slots, "lifetime_slots must be a sequence");
    if (sequence == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    if (n > 8) {
        Py_DECREF(sequence);
        PyErr_SetString(PyExc_ValueError, "at most 8 lifetime slots");
        return NULL;
    }
    MemoEntry *e = PyObject_New(MemoEntry, &MemoEntryType);
    if (e == NULL) {
        Py_DECREF(sequence);
        return NULL;
    }
    e->secret = e->mn_aaa_secret = e->attributes = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t slot = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(sequence, i));
        if ((slot == -1 && PyErr_Occurred()) || slot < 0 || slot > PyBytes_GET_SIZE(attributes) - 4) {
            Py_DECREF(sequence);
            Py_DECREF(e);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a lifetime slot lies outside the attributes");
            return NULL;
        }
        e->slots[i] = slot;
    }
    Py_DECREF(sequence);
    e->slot_count = (int)n;
    Py_INCREF(secret);
    e->secret = secret;
    Py_INCREF(mn_aaa_secret);
    e->mn_aaa_secret = mn_aaa_secret;
    Py_INCREF(attributes);
    e->attributes = attributes;
    e->require_ma = require_ma;
    e->valid_until = valid_until;
    e->expires = expires;
    e->mark_slot = mark_slot;
    e->mark_stamp = mark_stamp;
    if (PyDict_GET_SIZE(self->entries) >= self->limit && !PyDict_Contains(self->entries, key))
        PyDict_Clear(self->entries);
    int rc = PyDict_SetItem(self->entries, key, (PyObject *)e);
    Py_DECREF(e);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *memo_discard(RenewalMemo *self, PyObject *key)
{
    if (PyDict_DelItem(self->entries, key) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static PyObject *memo_clear(RenewalMemo *self, PyObject *unused)
{
    PyDict_Clear(self->entries);
    Py_RETURN_NONE;
}

static PyObject *memo_take_answered(RenewalMemo *self, PyObject *unused)
{
    Py_ssize_t n = self->answered;
    self->answered = 0;
    return PyLong_FromSsize_t(n);
}

static Py_ssize_t memo_len(RenewalMemo *self) { return PyDict_GET_SIZE(self->entries); }

#define MAX_PACKET 4096
#define MAX_SOURCE 255 /* octets of the source address's text */

/* answer(data, source, now) -> bytes | None: aaa_vpn/wire/memo.py rules 1-5. */
static PyObject *memo_answer(RenewalMemo *self, PyObject *args)
{
    Py_buffer view;
    const char *source;
    Py_ssize_t source_n;
    double now;
    if (!PyArg_ParseTuple(args, "y*s#d", &view, &source, &source_n, &now))
        return NULL;
    PyObject *result = NULL;
    const uint8_t *data = view.buf;
    size_t size = (size_t)view.len;
    uint8_t key[MAX_PACKET + MAX_SOURCE + 1];
    size_t key_n = 0;
    size_t ma = 0, chap_password = 0, chap_password_n = 0, chap_challenge = 0, chap_challenge_n = 0;
    size_t states[MAX_PACKET / 2]; /* an attribute is at least 2 octets */
    size_t state_count = 0;
    if (size < 20 || data[0] != 1 || (size_t)source_n > MAX_SOURCE)
        goto miss;
    size_t length = ((size_t)data[2] << 8) | data[3];
    if (length < 20 || length > size || length > MAX_PACKET)
        goto miss;
    memcpy(key, source, (size_t)source_n);
    key_n = (size_t)source_n;
    key[key_n++] = 0;
    for (size_t position = 20; position < length;) {
        if (length - position < 2)
            goto miss;
        uint8_t kind = data[position], n = data[position + 1];
        if (n < 2 || position + n > length)
            goto miss;
        switch (kind) {
        case 80: /* Message-Authenticator */
            if (ma || n != 18)
                goto miss;
            ma = position + 2;
            break;
        case 3: /* CHAP-Password */
            if (chap_password)
                goto miss;
            chap_password = position + 2;
            chap_password_n = n - 2;
            break;
        case 60: /* CHAP-Challenge */
            if (chap_challenge)
                goto miss;
            chap_challenge = position + 2;
            chap_challenge_n = n - 2;
            break;
        case 33: /* Proxy-State */
            states[state_count++] = position;
            break;
        default:
            memcpy(key + key_n, data + position, n);
            key_n += n;
        }
        position += n;
    }
    PyObject *key_object = PyBytes_FromStringAndSize((const char *)key, (Py_ssize_t)key_n);
    if (key_object == NULL)
        goto done;
    MemoEntry *e = (MemoEntry *)PyDict_GetItemWithError(self->entries, key_object);
    Py_DECREF(key_object);
    if (e == NULL) {
        if (PyErr_Occurred())
            goto done;
        goto miss;
    }
    if (!(now < e->valid_until))
        goto miss;
    if (e->mark_slot >= 0) {
        /* Another process may write the word at any time: read it once. */
        const volatile uint64_t *words = (const volatile uint64_t *)self->marks.buf;
        if (words[e->mark_slot] != (uint64_t)e->mark_stamp)
            goto miss;
    }
    const uint8_t *secret = (const uint8_t *)PyBytes_AS_STRING(e->secret);
    size_t secret_n = (size_t)PyBytes_GET_SIZE(e->secret);
    const uint8_t *authenticator = data + 4;
    if (!ma) {
        if (e->require_ma)
            goto miss;
    } else {
        hmac_t h;
        uint8_t mac[16];
        static const uint8_t zeros[16] = {0};
        hmac_init(&h, secret, secret_n);
        md5_update(&h.inner, data, ma);
        md5_update(&h.inner, zeros, 16);
        md5_update(&h.inner, data + ma + 16, length - ma - 16);
        hmac_final(&h, mac);
        if (!equal16(mac, data + ma))
            goto miss;
    }
    if (!chap_password || !chap_challenge || chap_password_n != 17 || chap_challenge_n < 5)
        goto miss;
    {
        md5_t h;
        uint8_t expected[16];
        md5_init(&h);
        md5_update(&h, data + chap_password, 1);
        md5_update(&h, (const uint8_t *)PyBytes_AS_STRING(e->mn_aaa_secret), (size_t)PyBytes_GET_SIZE(e->mn_aaa_secret));
        md5_update(&h, data + chap_challenge, chap_challenge_n);
        md5_final(&h, expected);
        if (!equal16(expected, data + chap_password + 1))
            goto miss;
    }
    double left = e->expires - now;
    if (!(left >= 0.0) || left >= 4294967296.0)
        goto miss;
    uint32_t lifetime = (uint32_t)left; /* int(): toward zero, as the role */
    size_t body_n = (size_t)PyBytes_GET_SIZE(e->attributes);
    size_t states_n = 0;
    for (size_t i = 0; i < state_count; i++)
        states_n += data[states[i] + 1];
    size_t reply_n = 20 + 18 + body_n + states_n;
    if (reply_n > MAX_PACKET)
        goto miss;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)reply_n);
    if (result == NULL)
        goto done;
    uint8_t *reply = (uint8_t *)PyBytes_AS_STRING(result);
    reply[0] = 2; /* Access-Accept */
    reply[1] = data[1];
    reply[2] = (uint8_t)(reply_n >> 8);
    reply[3] = (uint8_t)reply_n;
    memcpy(reply + 4, authenticator, 16); /* for the Message-Authenticator; replaced below */
    reply[20] = 80;
    reply[21] = 18;
    memset(reply + 22, 0, 16);
    uint8_t *body = reply + 38;
    memcpy(body, PyBytes_AS_STRING(e->attributes), body_n);
    for (int i = 0; i < e->slot_count; i++) {
        uint8_t *slot = body + e->slots[i];
        slot[0] = (uint8_t)(lifetime >> 24);
        slot[1] = (uint8_t)(lifetime >> 16);
        slot[2] = (uint8_t)(lifetime >> 8);
        slot[3] = (uint8_t)lifetime;
    }
    uint8_t *tail = body + body_n;
    for (size_t i = 0; i < state_count; i++) {
        memcpy(tail, data + states[i], data[states[i] + 1]);
        tail += data[states[i] + 1];
    }
    {
        hmac_t h;
        hmac_init(&h, secret, secret_n);
        md5_update(&h.inner, reply, reply_n); /* Authenticator = the request's, MA zeroed */
        hmac_final(&h, reply + 22);
        md5_t r;
        md5_init(&r);
        md5_update(&r, reply, reply_n);
        md5_update(&r, secret, secret_n);
        md5_final(&r, reply + 4); /* the Response Authenticator */
    }
    self->answered++;
    goto done;
miss:
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef memo_methods[] = {
    {"remember", (PyCFunction)memo_remember, METH_VARARGS,
     "remember(key, secret, mn_aaa_secret, attributes, lifetime_slots, require_message_authenticator, valid_until,"
     " expires, mark_slot=-1, mark_stamp=0)"},
    {"discard", (PyCFunction)memo_discard, METH_O, "discard(key)"},
    {"clear", (PyCFunction)memo_clear, METH_NOARGS, "clear()"},
    {"answer", (PyCFunction)memo_answer, METH_VARARGS, "answer(data, source, now) -> bytes | None"},
    {"take_answered", (PyCFunction)memo_take_answered, METH_NOARGS, "Requests answered since the last call."},
    {NULL},
};

static PySequenceMethods memo_as_sequence = {.sq_length = (lenfunc)memo_len};

static PyTypeObject RenewalMemoType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "aaa_vpn.wire._fast.RenewalMemo",
    .tp_basicsize = sizeof(RenewalMemo),
    .tp_dealloc = (destructor)memo_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The renewal memo of aaa_vpn/wire/memo.py, compiled.",
    .tp_methods = memo_methods,
    .tp_init = (initproc)memo_init,
    .tp_new = PyType_GenericNew,
    .tp_as_sequence = &memo_as_sequence,
};

/* ---------------------------------------------------------------- the module */

static PyMethodDef module_methods[] = {
    {"salt_encrypt", py_salt_encrypt, METH_VARARGS, "salt_encrypt(value, secret, authenticator, salt) -> bytes"},
    {"render", py_render, METH_VARARGS, "render(parts, lifetime, secret, authenticator, salt_base) -> bytes"},
    {"md5", py_md5, METH_VARARGS, "md5(data) -> 16 octets"},
    {"hmac_md5", py_hmac_md5, METH_VARARGS, "hmac_md5(key, data) -> 16 octets"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "aaa_vpn.wire._fast", "The compiled hot path of the RADIUS codec.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    if (PyType_Ready(&MemoEntryType) < 0 || PyType_Ready(&RenewalMemoType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RenewalMemoType);
    if (PyModule_AddObject(m, "RenewalMemo", (PyObject *)&RenewalMemoType) < 0) {
        Py_DECREF(&RenewalMemoType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
