using System.Buffers;
using System.Text.Unicode;

namespace Dtrain.Data.Datasets;

/// <summary>
/// Strict UTF-8 decoding of a stream, a buffer at a time: a leading BOM is dropped, and an invalid byte sequence is a
/// <see cref="DataFormatException"/> naming the file, line and byte offset, exactly as <see cref="DatasetReader.DecodeUtf8"/>
/// reports it for a whole file. Never holds more than its buffer.
/// </summary>
internal sealed class Utf8CharReader : IDisposable
{
    static ReadOnlySpan<byte> Bom => [0xEF, 0xBB, 0xBF];

    readonly Stream stream;
    readonly string file;
    byte[] bytes;
    int start, end;
    bool eof, first = true;
    long consumed, newlines;

    public Utf8CharReader(Stream stream, string file, int bufferBytes = 1 << 18)
    {
        this.stream = stream;
        this.file = file;
        bytes = ArrayPool<byte>.Shared.Rent(bufferBytes);
    }

    /// <summary>Decodes the next characters into <paramref name="destination"/> (at least 2 long, for a surrogate pair); 0 at the end.</summary>
    public int Read(Span<char> destination)
    {
        if (destination.Length < 2) throw new ArgumentException("needs room for a surrogate pair", nameof(destination));
        while (true)
        {
            if (end - start < 4 && !eof) { Fill(); continue; }
            if (first)
            {
                first = false;
                if (bytes.AsSpan(start, end - start).StartsWith(Bom)) { start += 3; consumed += 3; }
            }
            if (start == end && eof) return 0;
            var status = Utf8.ToUtf16(bytes.AsSpan(start, end - start), destination, out var read, out var written, replaceInvalidSequences: false, isFinalBlock: eof);
            newlines += bytes.AsSpan(start, read).Count((byte)'\n');
            consumed += read;
            start += read;
            if (status == System.Buffers.OperationStatus.InvalidData)
                throw new DataFormatException(file, (int)Math.Min(int.MaxValue, 1 + newlines), $"invalid UTF-8 byte sequence at byte offset {consumed}");
            if (written > 0) return written;
            if (eof && start == end) return 0;
            Fill();
        }
    }

    void Fill()
    {
        if (start > 0)
        {
            bytes.AsSpan(start, end - start).CopyTo(bytes);
            end -= start;
            start = 0;
        }
        int n;
        try
        {
            n = stream.Read(bytes, end, bytes.Length - end);
        }
        catch (InvalidDataException e)
        {
            throw new DataFormatException(file, 0, $"cannot decompress it: {e.Message}");
        }
        catch (ZstdSharp.ZstdException e)
        {
            throw new DataFormatException(file, 0, $"cannot decompress it: {e.Message}");
        }
        catch (IOException e)
        {
            throw new DataFormatException(file, 0, $"cannot read it: {e.Message}");
        }
        if (n == 0) eof = true;
        end += n;
    }

    public void Dispose()
    {
        if (bytes.Length == 0) return;
        ArrayPool<byte>.Shared.Return(bytes);
        bytes = [];
    }
}
