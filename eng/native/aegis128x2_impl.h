/*
 * The body of AEGIS-128X2 (draft-irtf-cfrg-aegis-aead, degree 2, 256-bit tag), written once and compiled twice by
 * aegis128x2.c: with VAES (a state word is one 256-bit register holding both lanes) and with AES-NI (a state word is
 * two 128-bit registers). The including file defines V, TARGET, FN(name) and the operations:
 *   V_LOAD(p)   32 bytes (lane 0 = bytes 0-15, lane 1 = bytes 16-31)      V_STORE(p, v)
 *   V_BCAST(p)  one 16-byte block in both lanes                            V_XOR, V_AND
 *   V_ENC(x, k) one AES round of each lane of x with round key k (AESENC)  V_FOLD(v) -> __m128i, lane 0 XOR lane 1
 */

static inline TARGET void FN(update)(V s[8], V d1, V d2)
{
    V t = s[7];
    s[7] = V_ENC(s[6], s[7]);
    s[6] = V_ENC(s[5], s[6]);
    s[5] = V_ENC(s[4], s[5]);
    s[4] = V_XOR(V_ENC(s[3], s[4]), d2);
    s[3] = V_ENC(s[2], s[3]);
    s[2] = V_ENC(s[1], s[2]);
    s[1] = V_ENC(s[0], s[1]);
    s[0] = V_XOR(V_ENC(t, s[0]), d1);
}

static TARGET void FN(init)(V s[8], const uint8_t *key, const uint8_t *nonce)
{
    V k = V_BCAST(key), n = V_BCAST(nonce), c0 = V_BCAST(AEGIS_C0), c1 = V_BCAST(AEGIS_C1), ctx = V_LOAD(AEGIS_CTX2);
    V kn = V_XOR(k, n);
    s[0] = kn; s[1] = c1; s[2] = c0; s[3] = c1;
    s[4] = kn; s[5] = V_XOR(k, c0); s[6] = V_XOR(k, c1); s[7] = V_XOR(k, c0);
    for (int i = 0; i < 10; i++)
    {
        s[3] = V_XOR(s[3], ctx);
        s[7] = V_XOR(s[7], ctx);
        FN(update)(s, n, k);
    }
}

static inline TARGET void FN(absorb)(V s[8], const uint8_t *src)
{
    FN(update)(s, V_LOAD(src), V_LOAD(src + 32));
}

static inline TARGET void FN(enc)(V s[8], uint8_t *dst, const uint8_t *src)
{
    V m0 = V_LOAD(src), m1 = V_LOAD(src + 32);
    V z0 = V_XOR(V_XOR(s[6], s[1]), V_AND(s[2], s[3]));
    V z1 = V_XOR(V_XOR(s[2], s[5]), V_AND(s[6], s[7]));
    V_STORE(dst, V_XOR(m0, z0));
    V_STORE(dst + 32, V_XOR(m1, z1));
    FN(update)(s, m0, m1);
}

static inline TARGET void FN(dec)(V s[8], uint8_t *dst, const uint8_t *src)
{
    V z0 = V_XOR(V_XOR(s[6], s[1]), V_AND(s[2], s[3]));
    V z1 = V_XOR(V_XOR(s[2], s[5]), V_AND(s[6], s[7]));
    V m0 = V_XOR(V_LOAD(src), z0), m1 = V_XOR(V_LOAD(src + 32), z1);
    V_STORE(dst, m0);
    V_STORE(dst + 32, m1);
    FN(update)(s, m0, m1);
}

/* The last, partial block (0 < len < 64): the keystream XOR the ciphertext, the state updated with the plaintext zero-padded. */
static TARGET void FN(dec_last)(V s[8], uint8_t *dst, const uint8_t *src, size_t len)
{
    uint8_t pad[64] __attribute__((aligned(32)));
    V z0 = V_XOR(V_XOR(s[6], s[1]), V_AND(s[2], s[3]));
    V z1 = V_XOR(V_XOR(s[2], s[5]), V_AND(s[6], s[7]));
    V_STORE(pad, z0);
    V_STORE(pad + 32, z1);
    for (size_t i = 0; i < len; i++) pad[i] ^= src[i];
    memcpy(dst, pad, len);
    memset(pad + len, 0, 64 - len);
    FN(absorb)(s, pad);
    wipe(pad, sizeof pad);
}

static TARGET void FN(finalize)(V s[8], uint8_t *tag, size_t adlen, size_t mlen)
{
    uint8_t sizes[16] __attribute__((aligned(16)));
    store_le64(sizes, (uint64_t)adlen * 8);
    store_le64(sizes + 8, (uint64_t)mlen * 8);
    V t = V_XOR(V_BCAST(sizes), s[2]);
    for (int i = 0; i < 7; i++) FN(update)(s, t, t);
    _mm_storeu_si128((__m128i *)tag, V_FOLD(V_XOR(V_XOR(s[0], s[1]), V_XOR(s[2], s[3]))));
    _mm_storeu_si128((__m128i *)(tag + 16), V_FOLD(V_XOR(V_XOR(s[4], s[5]), V_XOR(s[6], s[7]))));
}

static TARGET void FN(absorb_ad)(V s[8], const uint8_t *ad, size_t adlen)
{
    size_t i = 0;
    for (; i + 64 <= adlen; i += 64) FN(absorb)(s, ad + i);
    if (adlen % 64)
    {
        uint8_t pad[64] __attribute__((aligned(32))) = {0};
        memcpy(pad, ad + i, adlen % 64);
        FN(absorb)(s, pad);
    }
}

static TARGET void FN(encrypt)(uint8_t *c, uint8_t *tag, const uint8_t *m, size_t mlen, const uint8_t *ad, size_t adlen, const uint8_t *nonce, const uint8_t *key)
{
    V s[8];
    FN(init)(s, key, nonce);
    FN(absorb_ad)(s, ad, adlen);
    size_t i = 0;
    for (; i + 64 <= mlen; i += 64) FN(enc)(s, c + i, m + i);
    if (mlen % 64)
    {
        uint8_t pad[64] __attribute__((aligned(32))) = {0};
        memcpy(pad, m + i, mlen % 64);
        FN(enc)(s, pad, pad);
        memcpy(c + i, pad, mlen % 64);
        wipe(pad, sizeof pad);
    }
    FN(finalize)(s, tag, adlen, mlen);
    wipe(s, sizeof s);
}

static TARGET int FN(decrypt)(uint8_t *m, const uint8_t *c, size_t clen, const uint8_t *tag, const uint8_t *ad, size_t adlen, const uint8_t *nonce, const uint8_t *key)
{
    V s[8];
    uint8_t computed[32];
    FN(init)(s, key, nonce);
    FN(absorb_ad)(s, ad, adlen);
    size_t i = 0;
    for (; i + 64 <= clen; i += 64) FN(dec)(s, m + i, c + i);
    if (clen % 64) FN(dec_last)(s, m + i, c + i, clen % 64);
    FN(finalize)(s, computed, adlen, clen);
    wipe(s, sizeof s);
    uint8_t diff = 0;
    for (int j = 0; j < 32; j++) diff |= (uint8_t)(computed[j] ^ tag[j]);
    wipe(computed, sizeof computed);
    if (diff != 0)
    {
        if (clen != 0) memset(m, 0, clen);   /* never unauthenticated plaintext */
        return -1;
    }
    return 0;
}
