using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Dtrain.Collective;

/// <summary>
/// The record layer of a <c>tcp+tls</c> link after its mutual-TLS handshake: AEGIS-128X2 records (dtrain's own
/// native build of the draft's algorithm, eng/native/aegis128x2.c) sent in plain TCP, keyed from an ephemeral ECDH
/// exchange made inside the authenticated TLS session (see <see cref="TcpLink"/> and docs/cluster.md, "The TCP data plane
/// with TLS"). A record on the wire is <c>[type:1][0:3][length:4 LE][tag:32][ciphertext:length]</c>; the first 8 bytes are
/// the associated data, the nonce is the key's 16-byte IV XOR the record's sequence number under that key (never sent,
/// never repeated), so a record that is altered, replayed, dropped, reordered or moved to another link fails
/// authentication. The traffic secret ratchets forward (and the sequence restarts) every <see cref="RecordsPerKey"/>
/// records, as TLS 1.3's KeyUpdate does. AEGIS-128X2 (draft-irtf-cfrg-aegis-aead §7: AEGIS-128L, the CAESAR
/// competition's high-performance choice, run on two lanes) runs on the AES round instruction without GCM's GHASH; with
/// VAES both lanes go through one 256-bit instruction: about twice libsodium's AEGIS-128L here, which was 3.5x
/// AES-128-GCM (docs/benchmarks.md, issue 25). dtrain-bench's <c>tcp+tls256</c> rows use libsodium's AEGIS-256 (32-byte
/// key and nonce) instead.
/// </summary>
internal static class SealedRecords
{
    /// <summary>Bytes before a record's ciphertext: type, reserved, length (the associated data), then the tag.</summary>
    public const int HeadBytes = AdBytes + TagBytes;

    private const int AdBytes = 8;

    /// <summary>AEGIS's 256-bit tag (AEGIS-128X2's and libsodium's crypto_aead_aegis256_ABYTES).</summary>
    private const int TagBytes = 32;

    /// <summary>
    /// Largest plaintext of one record: a frame's payload goes in records of at most this many bytes. 1 MiB, the
    /// ring's piece (<see cref="RingAllReduce.DefaultMaxPieceFloats"/> floats), so a piece is one header record and one
    /// payload record: per MiB one cipher call and one write on the sending side, one read of the ciphertext and one
    /// cipher call on the receiving side (256 KiB records took 9 % more CPU in the ring: docs/benchmarks.md, issue 25).
    /// </summary>
    public const int ChunkBytes = 1024 * 1024;

    /// <summary>
    /// Records per key before the secret ratchets: 2^18 records of at most 1 MiB = 2^38 bytes per key. AEGIS-128X2 allows
    /// far more under one key (messages of up to 2^61 bytes; its nonce is 128 bits and ours never repeats), so this is a
    /// margin, kept from the AES-GCM records (2^34 blocks, RFC 8446 §5.5) that it replaced.
    /// </summary>
    public const long RecordsPerKey = (1L << 38) / ChunkBytes;

    /// <summary>Key bytes: 16 (AEGIS-128X2); 32 selects AEGIS-256.</summary>
    public const int DefaultKeyBytes = 16;

    /// <summary>
    /// The key size new links use: <see cref="DefaultKeyBytes"/>. Only dtrain-bench sets it (to 32, AEGIS-256, for
    /// its <c>tcp+tls256</c> rows beside <c>tcp+tls</c>): both ends of a link must use the same, or its first record fails.
    /// </summary>
    internal static int KeyBytes
    {
        get => keyBytes;
        set => keyBytes = value is 16 or 32 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "a key is 16 (AEGIS-128X2) or 32 (AEGIS-256) bytes here");
    }

    private static int keyBytes = DefaultKeyBytes;

    public const byte FrameHeader = 1;
    public const byte Payload = 2;
    public const byte Close = 3;

    private static readonly byte[] Label = "dtrain tcp+tls records v4 aegis128x2"u8.ToArray();

    /// <summary>Bytes on the wire for a record of <paramref name="plaintext"/> bytes.</summary>
    public static int Sealed(int plaintext) => HeadBytes + plaintext;

    public static string Describe(byte type) => type switch
    {
        FrameHeader => "frame header",
        Payload => "payload",
        Close => "close",
        _ => $"unknown ({type})",
    };

    /// <summary>
    /// The sender-to-receiver traffic secret: HKDF-SHA256 over the ECDH shared secret, salted with the hash of the
    /// transcript (both certificates, the claim, both key shares).
    /// </summary>
    public static byte[] TrafficSecret(ReadOnlySpan<byte> sharedSecret, ReadOnlySpan<byte> transcriptHash)
    {
        Span<byte> prk = stackalloc byte[32];
        HKDF.Extract(HashAlgorithmName.SHA256, sharedSecret, transcriptHash, prk);
        var secret = new byte[32];
        HKDF.Expand(HashAlgorithmName.SHA256, prk, secret, Info("sender to receiver"));
        CryptographicOperations.ZeroMemory(prk);
        return secret;
    }

    private static byte[] Info(string what) => [.. Label, (byte)' ', .. Encoding.ASCII.GetBytes(what)];

    /// <summary>An AEAD in detached mode (the tag apart from the ciphertext, which may be the plaintext's own memory).</summary>
    private abstract unsafe class Cipher
    {
        /// <summary>The cipher for a key of <paramref name="keyBytes"/> bytes: 16, AEGIS-128X2 (dtrain's native library); 32, AEGIS-256 (libsodium's).</summary>
        public static Cipher For(int keyBytes) => keyBytes switch
        {
            16 => Aegis128X2.Instance(),
            32 => Aegis256.Instance(),
            _ => throw new ArgumentOutOfRangeException(nameof(keyBytes), keyBytes, "a key is 16 (AEGIS-128X2) or 32 (AEGIS-256) bytes here"),
        };

        public abstract int Encrypt(byte* c, byte* tag, byte* m, int length, byte* ad, int adLength, byte* nonce, byte* key);

        /// <summary>0 when the record authenticates (else the plaintext is cleared by the cipher or by the caller).</summary>
        public abstract int Decrypt(byte* m, byte* c, int length, byte* tag, byte* ad, int adLength, byte* nonce, byte* key);
    }

    /// <summary>
    /// AEGIS-128X2 with its 256-bit tag (draft-irtf-cfrg-aegis-aead §7, degree 2), from eng/native/aegis128x2.c, which the
    /// build compiles into libdtrain_aegis.so beside the assemblies: VAES (both lanes in one 256-bit register, about
    /// twice AEGIS-128L's rate) where the CPU has it, AES-NI otherwise; the same bytes either way.
    /// </summary>
    private sealed unsafe class Aegis128X2 : Cipher
    {
        private static readonly Lazy<Aegis128X2> Loaded = new(() =>
        {
            int implementation;
            try
            {
                implementation = Native.dtrain_aegis128x2_implementation();
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
            {
                throw new CryptographicException(
                    $"tcp+tls records need dtrain's native cipher library (libdtrain_aegis.so, built from eng/native/aegis128x2.c with the system C compiler; run scripts/setup.sh and rebuild): {e.Message}", e);
            }
            if (implementation == 0)
                throw new CryptographicException("tcp+tls records need the CPU's AES instructions (x86-64 AES-NI), and this CPU has none: use the grpc data-plane transport on this host (`dtrain worker --transport grpc`, Worker:Transport)");
            return new Aegis128X2();
        });

        public static Aegis128X2 Instance() => Loaded.Value;

        /// <summary>2: VAES; 1: AES-NI (for messages and the benches).</summary>
        public static int Implementation => Native.dtrain_aegis128x2_implementation();

        public override int Encrypt(byte* c, byte* tag, byte* m, int length, byte* ad, int adLength, byte* nonce, byte* key) =>
            Native.dtrain_aegis128x2_encrypt(c, tag, m, (nuint)length, ad, (nuint)adLength, nonce, key);

        public override int Decrypt(byte* m, byte* c, int length, byte* tag, byte* ad, int adLength, byte* nonce, byte* key) =>
            Native.dtrain_aegis128x2_decrypt(m, c, (nuint)length, tag, ad, (nuint)adLength, nonce, key);
    }

    /// <summary>AEGIS-256 (libsodium 1.0.22's, through the native library NSec.Cryptography ships): dtrain-bench's tcp+tls256 rows.</summary>
    private sealed unsafe class Aegis256 : Cipher
    {
        private static readonly Lazy<Aegis256> Loaded = new(() =>
        {
            if (Sodium.sodium_init() < 0) throw new CryptographicException("libsodium could not be initialized (sodium_init failed)");
            return new Aegis256();
        });

        public static Aegis256 Instance() => Loaded.Value;

        public override int Encrypt(byte* c, byte* tag, byte* m, int length, byte* ad, int adLength, byte* nonce, byte* key)
        {
            ulong tagLength;
            var result = Sodium.crypto_aead_aegis256_encrypt_detached(c, tag, &tagLength, m, (ulong)length, ad, (ulong)adLength, null, nonce, key);
            return result == 0 && tagLength == TagBytes ? 0 : -1;
        }

        public override int Decrypt(byte* m, byte* c, int length, byte* tag, byte* ad, int adLength, byte* nonce, byte* key) =>
            Sodium.crypto_aead_aegis256_decrypt_detached(m, null, c, (ulong)length, tag, ad, (ulong)adLength, nonce, key);
    }

    internal static unsafe class Native
    {
        [DllImport("dtrain_aegis", CallingConvention = CallingConvention.Cdecl)]
        public static extern int dtrain_aegis128x2_implementation();

        /// <summary>Tests: run the AES-NI build (1) on a VAES CPU, or back to the best (2); -1 when the CPU lacks it.</summary>
        [DllImport("dtrain_aegis", CallingConvention = CallingConvention.Cdecl)]
        public static extern int dtrain_aegis128x2_force(int which);

        [DllImport("dtrain_aegis", CallingConvention = CallingConvention.Cdecl)]
        public static extern int dtrain_aegis128x2_encrypt(byte* c, byte* tag, byte* m, nuint mlen, byte* ad, nuint adlen, byte* nonce, byte* key);

        [DllImport("dtrain_aegis", CallingConvention = CallingConvention.Cdecl)]
        public static extern int dtrain_aegis128x2_decrypt(byte* m, byte* c, nuint clen, byte* tag, byte* ad, nuint adlen, byte* nonce, byte* key);
    }

    private static unsafe class Sodium
    {
        [DllImport("libsodium", CallingConvention = CallingConvention.Cdecl)]
        public static extern int sodium_init();

        [DllImport("libsodium", CallingConvention = CallingConvention.Cdecl)]
        public static extern int crypto_aead_aegis256_encrypt_detached(byte* c, byte* mac, ulong* maclen, byte* m, ulong mlen, byte* ad, ulong adlen, byte* nsec, byte* npub, byte* k);

        [DllImport("libsodium", CallingConvention = CallingConvention.Cdecl)]
        public static extern int crypto_aead_aegis256_decrypt_detached(byte* m, byte* nsec, byte* c, ulong clen, byte* mac, byte* ad, ulong adlen, byte* npub, byte* k);
    }

    /// <summary>One direction's keys: the current AEGIS key and IV, the sequence under it, the ratchet.</summary>
    private sealed class Keys : IDisposable
    {
        private readonly long recordsPerKey;
        private readonly Cipher cipher;
        private readonly byte[] secret;
        private readonly byte[] key;
        private readonly byte[] iv;
        private readonly byte[] nonce;
        private bool disposed;
        private long sequence;

        public Keys(byte[] trafficSecret, long recordsPerKey, int keyBytes)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(recordsPerKey, 1);
            cipher = Cipher.For(keyBytes);
            this.recordsPerKey = recordsPerKey;
            this.secret = (byte[])trafficSecret.Clone();
            key = new byte[keyBytes];
            iv = new byte[keyBytes];      // AEGIS-128X2: 16-byte nonce; AEGIS-256: 32
            nonce = new byte[keyBytes];
            Derive();
        }

        /// <summary>Records sealed or opened so far over all keys (for messages).</summary>
        public long Records { get; private set; }

        private void Derive()
        {
            HKDF.Expand(HashAlgorithmName.SHA256, this.secret, key, Info("key"));
            HKDF.Expand(HashAlgorithmName.SHA256, this.secret, iv, Info("iv"));
            sequence = 0;
        }

        /// <summary>This record's nonce (IV XOR sequence, in its last 8 bytes).</summary>
        private void Nonce()
        {
            iv.CopyTo(nonce, 0);
            var at = nonce.AsSpan(nonce.Length - 8);
            BinaryPrimitives.WriteUInt64BigEndian(at, BinaryPrimitives.ReadUInt64BigEndian(at) ^ (ulong)sequence);
        }

        public unsafe void Seal(ReadOnlySpan<byte> plaintext, Span<byte> ciphertext, Span<byte> tag, ReadOnlySpan<byte> ad)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (ciphertext.Length != plaintext.Length || tag.Length != TagBytes) throw new ArgumentException("a record seals into as many bytes and a 32-byte tag");
            Nonce();
            int result;
            fixed (byte* m = plaintext, c = ciphertext, t = tag, a = ad, n = nonce, k = key)
                result = cipher.Encrypt(c, t, m, plaintext.Length, a, ad.Length, n, k);
            if (result != 0) throw new CryptographicException($"AEGIS sealing failed ({result})");
        }

        /// <summary>False when the record fails authentication (then <paramref name="plaintext"/> holds no record bytes: cleared).</summary>
        public unsafe bool Open(ReadOnlySpan<byte> ciphertext, ReadOnlySpan<byte> tag, Span<byte> plaintext, ReadOnlySpan<byte> ad)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (ciphertext.Length != plaintext.Length || tag.Length != TagBytes) throw new ArgumentException("a record opens into as many bytes, with a 32-byte tag");
            Nonce();
            int result;
            fixed (byte* m = plaintext, c = ciphertext, t = tag, a = ad, n = nonce, k = key)
                result = cipher.Decrypt(m, c, ciphertext.Length, t, a, ad.Length, n, k);
            if (result == 0) return true;
            CryptographicOperations.ZeroMemory(plaintext);
            return false;
        }

    /// <summary>After a record: the next sequence number, or the next key (the old secret erased) when this one has done its share.</summary>
        public void Advance()
        {
            Records++;
            if (++sequence < this.recordsPerKey) return;
            Span<byte> next = stackalloc byte[32];
            HKDF.Expand(HashAlgorithmName.SHA256, this.secret, next, Info("next"));
            next.CopyTo(this.secret);
            CryptographicOperations.ZeroMemory(next);
            Derive();
        }

        public void Dispose()
        {
            disposed = true;
            CryptographicOperations.ZeroMemory(this.secret);
            CryptographicOperations.ZeroMemory(key);
            CryptographicOperations.ZeroMemory(iv);
        }
    }

    /// <summary>The sending end: seals records into the caller's buffer. One writer at a time.</summary>
    public sealed class Sealer(byte[] trafficSecret, long recordsPerKey = RecordsPerKey, int keyBytes = DefaultKeyBytes) : IDisposable
    {
        private readonly Keys keys = new(trafficSecret, recordsPerKey, keyBytes);

        /// <summary>Seals <paramref name="plaintext"/> as a record of <paramref name="type"/> into <paramref name="output"/>; returns the bytes written.</summary>
        public int Seal(byte type, ReadOnlySpan<byte> plaintext, Span<byte> output)
        {
            var length = Sealed(plaintext.Length);
            if (output.Length < length) throw new ArgumentException($"a record of {plaintext.Length} bytes needs {length} bytes of output", nameof(output));
            output[..AdBytes].Clear();
            output[0] = type;
            BinaryPrimitives.WriteInt32LittleEndian(output[4..], plaintext.Length);
            keys.Seal(plaintext, output.Slice(HeadBytes, plaintext.Length), output.Slice(AdBytes, TagBytes), output[..AdBytes]);
            keys.Advance();
            return length;
        }

        public void Dispose() => keys.Dispose();
    }

    /// <summary>The receiving end: checks a record's head, then opens its ciphertext in place.</summary>
    public sealed class Opener(byte[] trafficSecret, long recordsPerKey = RecordsPerKey, int keyBytes = DefaultKeyBytes) : IDisposable
    {
        private readonly Keys keys = new(trafficSecret, recordsPerKey, keyBytes);

        /// <summary>
        /// The type and length a record head announces; <see cref="InvalidDataException"/> when it is not a record
        /// of <paramref name="expected"/> type (or a close, when <paramref name="orClose"/>) of at most <paramref name="maxLength"/> bytes.
        /// </summary>
        public (byte Type, int Length) Check(ReadOnlySpan<byte> head, byte expected, int maxLength, bool orClose)
        {
            var type = head[0];
            var length = BinaryPrimitives.ReadInt32LittleEndian(head[4..]);
            if (head[1] != 0 || head[2] != 0 || head[3] != 0 || (type != expected && !(orClose && type == Close)))
                throw new InvalidDataException($"record {keys.Records + 1}: a {Describe(type)} record where a {Describe(expected)} record was due (the stream was altered, or is not this link's)");
            var max = type == Close ? 0 : maxLength;
            if (length < 0 || length > max)
                throw new InvalidDataException($"record {keys.Records + 1}: a {Describe(type)} record of {length} bytes (at most {max} here)");
            return (type, length);
        }

        /// <summary>Opens the record whose head is <paramref name="head"/> and whose ciphertext is <paramref name="data"/>, decrypting in place.</summary>
        public void Open(ReadOnlySpan<byte> head, Span<byte> data) => Open(head, data, data);

        /// <summary>
        /// Opens the record whose head is <paramref name="head"/> and whose ciphertext is <paramref name="ciphertext"/>
        /// into <paramref name="plaintext"/> (of the same length, or the same memory); when it fails authentication
        /// <paramref name="plaintext"/> is cleared (no unauthenticated plaintext is left there).
        /// </summary>
        public void Open(ReadOnlySpan<byte> head, ReadOnlySpan<byte> ciphertext, Span<byte> plaintext)
        {
            if (plaintext.Length != ciphertext.Length) throw new ArgumentException($"a record of {ciphertext.Length} bytes opens into as many bytes, not {plaintext.Length}", nameof(plaintext));
            if (!keys.Open(ciphertext, head.Slice(AdBytes, TagBytes), plaintext, head[..AdBytes]))
                throw new InvalidDataException(
                    $"record {keys.Records + 1} ({Describe(head[0])}, {ciphertext.Length} bytes) failed authentication: it was altered, replayed, reordered or dropped on the way, or sealed with another key; the link is closed");
            keys.Advance();
        }

        public void Dispose() => keys.Dispose();
    }
}
