/*
 * dtrain's record cipher for tcp+tls links: AEGIS-128X2 (draft-irtf-cfrg-aegis-aead, section 7: AEGIS-128L run on two
 * lanes with a per-lane context, degree 2) with its 256-bit tag, in detached mode. Two builds of one body
 * (aegis128x2_impl.h): VAES + AVX2 (both lanes in one 256-bit register: about twice AEGIS-128L's speed on CPUs with
 * VAES) and AES-NI (two 128-bit registers: AEGIS-128L's speed), chosen once from CPUID. Both give the same bytes; the
 * test suite checks them against the draft's test vectors (tests/Dtrain.Tests SealedRecordsTests).
 * Built by eng/Native.targets with the system C compiler; no other dependency than libc.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

static const uint8_t AEGIS_C0[16] __attribute__((aligned(16))) = { 0x00, 0x01, 0x01, 0x02, 0x03, 0x05, 0x08, 0x0d, 0x15, 0x22, 0x37, 0x59, 0x90, 0xe9, 0x79, 0x62 };
static const uint8_t AEGIS_C1[16] __attribute__((aligned(16))) = { 0xdb, 0x3d, 0x18, 0x55, 0x6d, 0xc2, 0x2f, 0xf1, 0x20, 0x11, 0x31, 0x42, 0x73, 0xb5, 0x28, 0xdd };
/* ctx[i] = byte i, byte D - 1 (= 1), then zeros: lane 0, lane 1. */
static const uint8_t AEGIS_CTX2[32] __attribute__((aligned(32))) = { 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };

static void wipe(void *p, size_t n)
{
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--) *v++ = 0;
}

static inline void store_le64(uint8_t *p, uint64_t x)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(x >> (8 * i));
}

/* ---- VAES: a state word is one 256-bit register ---- */
#define V __m256i
#define TARGET __attribute__((target("vaes,avx2,aes")))
#define FN(name) vaes_##name
#define V_LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define V_STORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define V_BCAST(p) _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p)))
#define V_XOR _mm256_xor_si256
#define V_AND _mm256_and_si256
#define V_ENC _mm256_aesenc_epi128
#define V_FOLD(v) _mm_xor_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256((v), 1))
#include "aegis128x2_impl.h"
#undef V
#undef TARGET
#undef FN
#undef V_LOAD
#undef V_STORE
#undef V_BCAST
#undef V_XOR
#undef V_AND
#undef V_ENC
#undef V_FOLD

/* ---- AES-NI: a state word is two 128-bit registers ---- */
typedef struct { __m128i a, b; } pair;
#define NI __attribute__((target("aes,avx")))
static inline NI pair op_load(const uint8_t *p) { pair r = { _mm_loadu_si128((const __m128i *)p), _mm_loadu_si128((const __m128i *)(p + 16)) }; return r; }
static inline NI void op_store(uint8_t *p, pair v) { _mm_storeu_si128((__m128i *)p, v.a); _mm_storeu_si128((__m128i *)(p + 16), v.b); }
static inline NI pair op_bcast(const uint8_t *p) { __m128i x = _mm_loadu_si128((const __m128i *)p); pair r = { x, x }; return r; }
static inline NI pair op_xor(pair x, pair y) { pair r = { _mm_xor_si128(x.a, y.a), _mm_xor_si128(x.b, y.b) }; return r; }
static inline NI pair op_and(pair x, pair y) { pair r = { _mm_and_si128(x.a, y.a), _mm_and_si128(x.b, y.b) }; return r; }
static inline NI pair op_enc(pair x, pair k) { pair r = { _mm_aesenc_si128(x.a, k.a), _mm_aesenc_si128(x.b, k.b) }; return r; }
static inline NI __m128i op_fold(pair v) { return _mm_xor_si128(v.a, v.b); }
#define V pair
#define TARGET NI
#define FN(name) ni_##name
#define V_LOAD op_load
#define V_STORE op_store
#define V_BCAST op_bcast
#define V_XOR op_xor
#define V_AND op_and
#define V_ENC op_enc
#define V_FOLD op_fold
#include "aegis128x2_impl.h"

static int implementation = -1;

/* 2: VAES + AVX2; 1: AES-NI; 0: this CPU has no AES instructions (the links refuse tcp+tls then). */
EXPORT int dtrain_aegis128x2_implementation(void)
{
    if (implementation < 0)
    {
        __builtin_cpu_init();
        implementation = __builtin_cpu_supports("vaes") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("aes") ? 2
            : __builtin_cpu_supports("aes") && __builtin_cpu_supports("avx") ? 1 : 0;
    }
    return implementation;
}

/* Tests force the AES-NI build on a VAES CPU (both must give the same bytes): 1 or 2, as long as the CPU has it. */
EXPORT int dtrain_aegis128x2_force(int which)
{
    int best = (implementation = -1, dtrain_aegis128x2_implementation());
    if (which < 1 || which > best) return -1;
    implementation = which;
    return 0;
}

/* c and m may be the same memory. tag: 32 bytes. Returns 0, or -1 when the CPU has no AES instructions. */
EXPORT int dtrain_aegis128x2_encrypt(uint8_t *c, uint8_t *tag, const uint8_t *m, size_t mlen, const uint8_t *ad, size_t adlen, const uint8_t *nonce, const uint8_t *key)
{
    switch (dtrain_aegis128x2_implementation())
    {
        case 2: vaes_encrypt(c, tag, m, mlen, ad, adlen, nonce, key); return 0;
        case 1: ni_encrypt(c, tag, m, mlen, ad, adlen, nonce, key); return 0;
        default: return -1;
    }
}

/* m and c may be the same memory. Returns 0; -1 when the tag does not match (m is then cleared); -2 without AES instructions. */
EXPORT int dtrain_aegis128x2_decrypt(uint8_t *m, const uint8_t *c, size_t clen, const uint8_t *tag, const uint8_t *ad, size_t adlen, const uint8_t *nonce, const uint8_t *key)
{
    switch (dtrain_aegis128x2_implementation())
    {
        case 2: return vaes_decrypt(m, c, clen, tag, ad, adlen, nonce, key);
        case 1: return ni_decrypt(m, c, clen, tag, ad, adlen, nonce, key);
        default: return -2;
    }
}

#else

EXPORT int dtrain_aegis128x2_implementation(void) { return 0; }
EXPORT int dtrain_aegis128x2_force(int which) { (void)which; return -1; }
EXPORT int dtrain_aegis128x2_encrypt(uint8_t *c, uint8_t *tag, const uint8_t *m, size_t mlen, const uint8_t *ad, size_t adlen, const uint8_t *nonce, const uint8_t *key)
{ (void)c; (void)tag; (void)m; (void)mlen; (void)ad; (void)adlen; (void)nonce; (void)key; return -1; }
EXPORT int dtrain_aegis128x2_decrypt(uint8_t *m, const uint8_t *c, size_t clen, const uint8_t *tag, const uint8_t *ad, size_t adlen, const uint8_t *nonce, const uint8_t *key)
{ (void)m; (void)c; (void)clen; (void)tag; (void)ad; (void)adlen; (void)nonce; (void)key; return -2; }

#endif
