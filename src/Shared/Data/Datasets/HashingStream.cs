using System.Security.Cryptography;

namespace Dtrain.Data.Datasets;

/// <summary>A read-only stream over a file that hashes (SHA-256, unless told not to) and counts every byte read through it.</summary>
public sealed class HashingStream(Stream inner, bool hash = true) : Stream
{
    readonly IncrementalHash? hash = hash ? IncrementalHash.CreateHash(HashAlgorithmName.SHA256) : null;

    public long BytesRead { get; private set; }

    /// <summary>The SHA-256 (lowercase hex) of the bytes read so far.</summary>
    public string Sha256() => Convert.ToHexStringLower((hash ?? throw new InvalidOperationException("this stream was opened without hashing")).GetCurrentHash());

    public override int Read(Span<byte> buffer)
    {
        var n = inner.Read(buffer);
        hash?.AppendData(buffer[..n]);
        BytesRead += n;
        return n;
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => BytesRead; set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
            hash?.Dispose();
        }
        base.Dispose(disposing);
    }
}
