using System.Buffers;
using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

/// <summary>
/// Reads one source file in constant memory as <see cref="TextPiece"/>s with the record semantics of the in-memory
/// readers (<see cref="TextFileReader"/>: the whole file one record, CRLF made LF; <see cref="JsonlReader"/>: one object
/// per non-blank line; <see cref="CsvReader"/>: RFC 4180 with a header) and the same errors, files and lines.
/// </summary>
internal static class SourceReader
{
    const int TextBuffer = 1 << 18;

    /// <summary>What reading a source to its end found: its size and SHA-256 as stored (the hash only when asked for).</summary>
    public sealed class Stored
    {
        public long Bytes { get; set; }
        public string? Sha256 { get; set; }
    }

    /// <param name="hashAside">
    /// With <paramref name="stored"/>: the file's size and SHA-256 come from a second read of it on a thread of its own
    /// (from the page cache, beside the decoding) instead of from the bytes decoded.
    /// </param>
    public static IEnumerable<TextPiece> Read(SourceFile source, ReadOptions options, DataReportBuilder report, Stored? stored, CancellationToken cancel, bool hashAside = false)
    {
        hashAside &= stored is not null;
        using var stop = hashAside ? CancellationTokenSource.CreateLinkedTokenSource(cancel) : null;
        var aside = hashAside ? Task.Factory.StartNew(() => HashFile(source.Path, stop!.Token), stop!.Token, TaskCreationOptions.LongRunning, TaskScheduler.Default) : null;
        try
        {
            using var stream = SourceFiles.Open(source, out var raw, hash: stored is not null && !hashAside); // the passes that only count skip SHA-256
            using var reader = new Utf8CharReader(stream, source.Path);
            var policy = new RecordPolicy(source.Path, options, report);
            var pieces = source.Format switch
            {
                DataFormats.Text => Text(source.Path, reader, policy, options, cancel),
                DataFormats.Jsonl => Jsonl(source.Path, reader, policy, options, cancel),
                DataFormats.Csv => Csv(source.Path, reader, policy, options, cancel),
                _ => throw new ArgumentException($"cannot read format \"{source.Format}\"; expected text, jsonl or csv"),
            };
            foreach (var piece in pieces) yield return piece;
            policy.Finish();
            if (aside is not null)
            {
                (stored!.Bytes, stored.Sha256) = aside.GetAwaiter().GetResult();
                aside = null;
            }
            else if (stored is not null)
            {
                // Whatever the decompressor left unread (trailing bytes) still belongs to the file's size and hash.
                var rest = ArrayPool<byte>.Shared.Rent(1 << 16);
                while (raw.Read(rest, 0, rest.Length) > 0) { }
                ArrayPool<byte>.Shared.Return(rest);
                stored.Bytes = raw.BytesRead;
                stored.Sha256 = raw.Sha256();
            }
        }
        finally
        {
            if (aside is not null)
            {
                // Reading failed or stopped: stop the hashing and wait for it (its own error, if any, is superseded).
                stop!.Cancel();
                try { aside.Wait(CancellationToken.None); }
                catch (AggregateException) { }
            }
        }
    }

    /// <summary>The size and SHA-256 (lowercase hex) of the file at <paramref name="path"/> as stored.</summary>
    internal static (long Bytes, string Sha256) HashFile(string path, CancellationToken cancel)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
            using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
            long bytes = 0;
            int n;
            while ((n = file.Read(buffer)) > 0)
            {
                cancel.ThrowIfCancellationRequested();
                hash.AppendData(buffer.AsSpan(0, n));
                bytes += n;
            }
            return (bytes, Convert.ToHexStringLower(hash.GetHashAndReset()));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DataFormatException(path, 0, $"cannot read it: {e.Message}");
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>ASCII characters that are whitespace (a file of only whitespace is an error, found by <see cref="Read"/>).</summary>
    static readonly SearchValues<byte> AsciiWhiteSpace = SearchValues.Create(Enumerable.Range(0, 128).Where(c => char.IsWhiteSpace((char)c)).Select(c => (byte)c).ToArray());

    /// <summary>
    /// The length in UTF-16 characters of a plain-text source as <see cref="Read"/> yields it (BOM dropped, CRLF made
    /// LF), from its bytes without decoding them (UTF-8 validated and counted by vectorized loops), or null when only
    /// <see cref="Read"/> can tell: the bytes are not valid UTF-8, or whether the text is more than whitespace is not
    /// decided by its first non-whitespace byte being ASCII (<see cref="Read"/> then reports the error).
    /// </summary>
    public static long? TextLength(SourceFile source, CancellationToken cancel)
    {
        if (source.Format != DataFormats.Text) throw new ArgumentException($"{source.Path}: only plain text has a length without reading its records");
        using var stream = SourceFiles.Open(source, out _, hash: false);
        var bytes = ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            long chars = 0, crlf = 0;
            int kept = 0; // bytes of an unfinished UTF-8 sequence carried to the front of the buffer
            bool first = true, content = false, crBefore = false;
            while (true)
            {
                cancel.ThrowIfCancellationRequested();
                var n = Fill(stream, bytes, kept, source.Path);
                var end = kept + n;
                var data = bytes.AsSpan(0, end);
                if (first && (n == 0 || end >= 3))
                {
                    first = false;
                    if (data.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF])) data = data[3..];
                }
                else if (first) { kept = end; continue; } // fewer than 3 bytes so far: the BOM is still undecided
                // Up to the last whole sequence; an unfinished one waits for the next read (at the end it is invalid).
                var whole = n == 0 ? data.Length : WholeSequences(data);
                var part = data[..whole];
                if (!System.Text.Unicode.Utf8.IsValid(part)) return null;
                if (!content && part.IndexOfAnyExcept(AsciiWhiteSpace) is var at and >= 0)
                {
                    if (part[at] >= 0x80) return null;
                    content = true;
                }
                chars += System.Text.Encoding.UTF8.GetCharCount(part);
                crlf += part.Count("\r\n"u8);
                if (crBefore && part.Length > 0 && part[0] == (byte)'\n') crlf++;
                if (part.Length > 0) crBefore = part[^1] == (byte)'\r';
                if (n == 0) return content ? chars - crlf : null;
                kept = data.Length - whole;
                data[whole..].CopyTo(bytes);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(bytes);
        }
    }

    /// <summary>The length of <paramref name="data"/> up to the start of a multi-byte sequence its end cuts short.</summary>
    static int WholeSequences(ReadOnlySpan<byte> data)
    {
        for (var back = 1; back <= Math.Min(4, data.Length); back++)
        {
            var b = data[^back];
            if ((b & 0xC0) == 0x80) continue; // a continuation byte: look further back
            var need = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
            return need > back ? data.Length - back : data.Length;
        }
        return data.Length;
    }

    static int Fill(Stream stream, byte[] bytes, int from, string path)
    {
        try
        {
            return stream.Read(bytes, from, bytes.Length - from);
        }
        catch (InvalidDataException e)
        {
            throw new DataFormatException(path, 0, $"cannot decompress it: {e.Message}");
        }
        catch (ZstdSharp.ZstdException e)
        {
            throw new DataFormatException(path, 0, $"cannot decompress it: {e.Message}");
        }
        catch (IOException e)
        {
            throw new DataFormatException(path, 0, $"cannot read it: {e.Message}");
        }
    }

    static IEnumerable<TextPiece> Text(string path, Utf8CharReader reader, RecordPolicy policy, ReadOptions options, CancellationToken cancel)
    {
        if (options.LabelField is not null) throw new ArgumentException("plain text files have no labels; use jsonl or csv for classification");
        var buffer = ArrayPool<char>.Shared.Rent(TextBuffer);
        try
        {
            var content = false;
            var pendingCr = false;
            while (true)
            {
                cancel.ThrowIfCancellationRequested();
                var n = 0;
                if (pendingCr) buffer[n++] = '\r';
                var got = reader.Read(buffer.AsSpan(n));
                n += got;
                pendingCr = got > 0 && buffer[n - 1] == '\r'; // its "\n" may come with the next read
                if (pendingCr) n--;
                n = NormalizeLineEnds(buffer.AsSpan(0, n));
                if (!content && !buffer.AsSpan(0, n).IsWhiteSpace()) content = true;
                if (got == 0)
                {
                    if (!content) throw new DataFormatException(path, 0, "file is empty");
                    policy.CountWhole();
                    yield return new TextPiece(buffer.AsMemory(0, n), true, null, path, 1);
                    yield break;
                }
                if (n > 0) yield return new TextPiece(buffer.AsMemory(0, n), false, null, path, 1);
            }
        }
        finally
        {
            ArrayPool<char>.Shared.Return(buffer);
        }
    }

    /// <summary>"\r\n" becomes "\n" in place; returns the new length.</summary>
    internal static int NormalizeLineEnds(Span<char> span)
    {
        var at = span.IndexOf("\r\n");
        if (at < 0) return span.Length;
        var write = at;
        var read = at;
        while (read < span.Length)
        {
            if (span[read] == '\r' && read + 1 < span.Length && span[read + 1] == '\n') read++;
            span[write++] = span[read++];
        }
        return write;
    }

    static IEnumerable<TextPiece> Jsonl(string path, Utf8CharReader reader, RecordPolicy policy, ReadOptions options, CancellationToken cancel)
    {
        var buffer = ArrayPool<char>.Shared.Rent(TextBuffer);
        var line = ArrayPool<char>.Shared.Rent(1 << 12);
        try
        {
            var lineLength = 0;
            long lineNo = 0;
            var content = false;
            while (true)
            {
                var n = reader.Read(buffer);
                var at = 0;
                while (true)
                {
                    var nl = n == 0 ? -1 : buffer.AsSpan(at, n - at).IndexOf('\n');
                    var partLength = nl < 0 ? n - at : nl;
                    if (lineLength + partLength > line.Length)
                    {
                        var bigger = ArrayPool<char>.Shared.Rent(Math.Max(line.Length * 2, lineLength + partLength));
                        line.AsSpan(0, lineLength).CopyTo(bigger);
                        ArrayPool<char>.Shared.Return(line);
                        line = bigger;
                    }
                    buffer.AsSpan(at, partLength).CopyTo(line.AsSpan(lineLength));
                    lineLength += partLength;
                    if (nl < 0 && n > 0) break; // the line goes on in the next read
                    if (++lineNo % 4096 == 0) cancel.ThrowIfCancellationRequested();
                    var length = lineLength;
                    lineLength = 0;
                    if (!line.AsSpan(0, length).IsWhiteSpace())
                    {
                        content = true;
                        if (JsonlReader.ParseLine(line.AsSpan(0, length).TrimEnd('\r'), options, out var value, out var label) is { } problem) policy.Bad(lineNo, problem);
                        else if (policy.Add(value, lineNo) is { } kept) yield return new TextPiece(kept.AsMemory(), true, label, path, lineNo);
                    }
                    if (nl < 0) break; // the end of the file
                    at += nl + 1;
                }
                if (n == 0) break;
            }
            if (!content) throw new DataFormatException(path, 0, "file is empty");
        }
        finally
        {
            ArrayPool<char>.Shared.Return(buffer);
            ArrayPool<char>.Shared.Return(line);
        }
    }

    static IEnumerable<TextPiece> Csv(string path, Utf8CharReader reader, RecordPolicy policy, ReadOptions options, CancellationToken cancel)
    {
        using var parser = new CsvStreamParser(path, reader, options.QuoteContent);
        var records = new CsvRecords(path, parser, options);
        while (records.Next(cancel, out var line, out var value, out var label, out var problem))
        {
            if (problem is not null) policy.Bad(line, problem);
            else if (policy.Add(value, line) is { } kept) yield return new TextPiece(kept.AsMemory(), true, label, path, line);
        }
    }
}
