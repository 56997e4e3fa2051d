using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Dtrain.Collective;

/// <summary>
/// The record layer of a <c>tcp+tls</c> link after its mutual-TLS handshake: AES-128-GCM records sent in plain TCP,
/// keyed from an ephemeral ECDH exchange made inside the authenticated TLS session (see <see cref="TcpLink"/> and
/// docs/cluster.md, "The TCP data plane with TLS"). A record on the wire is
/// <c>[type:1][0:3][length:4 LE][GCM tag:16][ciphertext:length]</c>; the first 8 bytes are the associated data, the
/// nonce is the key's 12-byte IV XOR the record's sequence number under that key (never sent, never repeated), so a
/// record that is altered, replayed, dropped, reordered or moved to another link fails authentication. The traffic
/// secret ratchets forward (and the sequence restarts) every <see cref="RecordsPerKey"/> records, as TLS 1.3's KeyUpdate
/// does, so no key protects more than 2^38 bytes (2^34 AES blocks: RFC 8446 §5.5's margin for AES-GCM, which is the
/// 128-bit block's birthday bound and so the same for AES-128 and AES-256). AES-128-GCM is TLS 1.3's mandatory suite
/// (RFC 8446 §9.1): 10 rounds where AES-256 takes 14, the same GHASH.
/// </summary>
internal static class SealedRecords
{
    /// <summary>Bytes before a record's ciphertext: type, reserved, length (the associated data), then the tag.</summary>
    public const int HeadBytes = 24;

    private const int AdBytes = 8;
    private const int TagBytes = 16;

    /// <summary>
    /// Largest plaintext of one record: a frame's payload goes in records of at most this many bytes. 1 MiB, the
    /// ring's piece (<see cref="RingAllReduce.DefaultMaxPieceFloats"/> floats), so a piece is one header record and one
    /// payload record: per MiB one cipher call and one write on the sending side, one read of the ciphertext and one
    /// cipher call on the receiving side (256 KiB records took 9 % more CPU in the ring: docs/benchmarks.md, issue 25).
    /// </summary>
    public const int ChunkBytes = 1024 * 1024;

    /// <summary>
    /// Records per key before the secret ratchets: 2^18 records of at most 1 MiB = 2^38 bytes = 2^34 blocks, so an
    /// attacker's advantage in telling the records from random stays below (2^34 + 2^18)^2 / 2^129 ≈ 2^-61 per key
    /// (the AEAD limits draft's confidentiality bound for AES-GCM; RFC 8446 §5.5 allows 2^34.5 blocks for 2^-60). The
    /// bound is the block size's, not the key's: it is the same for AES-128-GCM as for AES-256-GCM.
    /// </summary>
    public const long RecordsPerKey = (1L << 38) / ChunkBytes;

    /// <summary>AES key bytes: 16 (AES-128-GCM).</summary>
    public const int DefaultKeyBytes = 16;

    /// <summary>
    /// The key size new links use: <see cref="DefaultKeyBytes"/>. Only dtrain-bench sets it (to 32, AES-256-GCM, for
    /// its <c>tcp+tls256</c> rows beside <c>tcp+tls</c>): both ends of a link must use the same, or its first record fails.
    /// </summary>
    internal static int KeyBytes
    {
        get => keyBytes;
        set => keyBytes = value is 16 or 32 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "an AES key is 16 or 32 bytes here");
    }

    private static int keyBytes = DefaultKeyBytes;

    public const byte FrameHeader = 1;
    public const byte Payload = 2;
    public const byte Close = 3;

    private static readonly byte[] Label = "dtrain tcp+tls records v2"u8.ToArray();

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

    /// <summary>One direction's keys: the current AES-GCM key and IV, the sequence under it, the ratchet.</summary>
    private sealed class Keys : IDisposable
    {
        private readonly long recordsPerKey;
        private readonly int keyBytes;
        private readonly byte[] secret;
        private readonly byte[] iv = new byte[12];
        private readonly byte[] nonce = new byte[12];
        private AesGcm? aes;
        private long sequence;

        public Keys(byte[] trafficSecret, long recordsPerKey, int keyBytes)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(recordsPerKey, 1);
            if (keyBytes is not (16 or 32)) throw new ArgumentOutOfRangeException(nameof(keyBytes), keyBytes, "an AES key is 16 or 32 bytes here");
            this.recordsPerKey = recordsPerKey;
            this.keyBytes = keyBytes;
            this.secret = (byte[])trafficSecret.Clone();
            Derive();
        }

        /// <summary>Records sealed or opened so far over all keys (for messages).</summary>
        public long Records { get; private set; }

        public AesGcm Aes => aes ?? throw new ObjectDisposedException(nameof(SealedRecords));

        private void Derive()
        {
            Span<byte> key = stackalloc byte[this.keyBytes];
            HKDF.Expand(HashAlgorithmName.SHA256, this.secret, key, Info("key"));
            HKDF.Expand(HashAlgorithmName.SHA256, this.secret, iv, Info("iv"));
            aes?.Dispose();
            aes = new AesGcm(key, TagBytes);
            CryptographicOperations.ZeroMemory(key);
            sequence = 0;
        }

        /// <summary>This record's nonce (IV XOR sequence).</summary>
        public ReadOnlySpan<byte> Nonce()
        {
            iv.CopyTo(nonce, 0);
            var counter = BinaryPrimitives.ReadUInt64BigEndian(nonce.AsSpan(4)) ^ (ulong)sequence;
            BinaryPrimitives.WriteUInt64BigEndian(nonce.AsSpan(4), counter);
            return nonce;
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
            aes?.Dispose();
            aes = null;
            CryptographicOperations.ZeroMemory(this.secret);
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
            keys.Aes.Encrypt(keys.Nonce(), plaintext, output.Slice(HeadBytes, plaintext.Length), output.Slice(AdBytes, TagBytes), output[..AdBytes]);
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
        /// <paramref name="plaintext"/> is cleared (the platform's AES-GCM never leaves unauthenticated plaintext there).
        /// </summary>
        public void Open(ReadOnlySpan<byte> head, ReadOnlySpan<byte> ciphertext, Span<byte> plaintext)
        {
            if (plaintext.Length != ciphertext.Length) throw new ArgumentException($"a record of {ciphertext.Length} bytes opens into as many bytes, not {plaintext.Length}", nameof(plaintext));
            try
            {
                keys.Aes.Decrypt(keys.Nonce(), ciphertext, head.Slice(AdBytes, TagBytes), plaintext, head[..AdBytes]);
            }
            catch (CryptographicException ex)
            {
                throw new InvalidDataException(
                    $"record {keys.Records + 1} ({Describe(head[0])}, {ciphertext.Length} bytes) failed authentication: it was altered, replayed, reordered or dropped on the way, or sealed with another key; the link is closed", ex);
            }
            keys.Advance();
        }

        public void Dispose() => keys.Dispose();
    }
}
