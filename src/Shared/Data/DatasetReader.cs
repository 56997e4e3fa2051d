using System.Text;
using System.Text.Unicode;
using Dtrain.Data.Datasets;
using Dtrain.Specs;

namespace Dtrain.Data;

/// <summary>
/// Reads one data file into records, by format (<see cref="TextFileReader"/>, <see cref="JsonlReader"/>,
/// <see cref="CsvReader"/>). Every problem with the data is a <see cref="DataFormatException"/> naming the file
/// and 1-based line; with on_error = "skip" malformed records are dropped and counted in the report instead.
/// </summary>
public static class DatasetReader
{
    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static IReadOnlyList<TextRecord> Read(string path, ReadOptions options, DataReportBuilder report, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(report);
        if (!OverlengthPolicies.All.Contains(options.Overlength))
            throw new ArgumentException($"unknown overlength policy \"{options.Overlength}\"", nameof(options));
        if (!ErrorPolicies.All.Contains(options.OnError))
            throw new ArgumentException($"unknown on_error policy \"{options.OnError}\"", nameof(options));
        return options.Format switch
        {
            DataFormats.Text => TextFileReader.Read(path, options, report, cancel),
            DataFormats.Jsonl => JsonlReader.Read(path, options, report, cancel),
            DataFormats.Csv => CsvReader.Read(path, options, report, cancel),
            _ => throw new ArgumentException($"cannot read format \"{options.Format}\" from a file; expected text, jsonl or csv", nameof(options)),
        };
    }

    /// <summary>The file's text, decoded as strict UTF-8 (a leading BOM is dropped), within the default size limit.</summary>
    /// <exception cref="DataFormatException">The file is missing or unreadable, not a regular file, too large, or holds an invalid UTF-8 sequence (reported with its line and byte offset).</exception>
    public static string ReadAllText(string path) => ReadAllText(path, new ReadOptions(), default);

    /// <summary>The file's text, decoded as strict UTF-8, read through <see cref="DataFile.ReadAllBytes"/> with the size limit, progress and cancellation of <paramref name="options"/>.</summary>
    /// <exception cref="DataFormatException">The file is missing or unreadable, not a regular file (FIFO, device, directory), larger than <see cref="ReadOptions.MaxFileBytes"/>, or holds an invalid UTF-8 sequence.</exception>
    public static string ReadAllText(string path, ReadOptions options, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(options);
        return DecodeUtf8(path, DataFile.ReadAllBytes(path, options.MaxFileBytes, options.MaxFileBytesName, cancel, options.Progress, options.Open));
    }

    /// <summary>Strict UTF-8 decoding of <paramref name="bytes"/> read from <paramref name="file"/>.</summary>
    public static string DecodeUtf8(string file, byte[] bytes)
    {
        ArgumentNullException.ThrowIfNull(bytes);
        var start = bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]) ? 3 : 0;
        try
        {
            return StrictUtf8.GetString(bytes, start, bytes.Length - start);
        }
        catch (DecoderFallbackException)
        {
            // Find the offending offset ourselves: the exception's index is relative to an internal chunk.
            var body = bytes.AsSpan(start);
            Utf8.ToUtf16(body, new char[body.Length], out var valid, out _, replaceInvalidSequences: false);
            var offset = start + valid;
            var line = 1 + bytes.AsSpan(0, offset).Count((byte)'\n');
            throw new DataFormatException(file, line, $"invalid UTF-8 byte sequence at byte offset {offset}");
        }
    }

    /// <summary>"file is empty" for text that is empty or only whitespace.</summary>
    internal static void RequireContent(string file, string text)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new DataFormatException(file, 0, "file is empty");
    }
}

/// <summary>The records of one file, kept under the error and over-length policies of <see cref="RecordPolicy"/>.</summary>
internal sealed class RecordCollector(string file, ReadOptions options, DataReportBuilder report)
{
    readonly string file = file;
    readonly RecordPolicy policy = new(file, options, report);
    readonly List<TextRecord> records = [];

    /// <summary>A malformed record: fatal, or skipped and counted under on_error = "skip".</summary>
    public void Bad(int line, string problem) => policy.Bad(line, problem);

    public void Add(string text, string? label, int line)
    {
        if (policy.Add(text, line) is { } kept) records.Add(new TextRecord(kept, label, file, line));
    }

    public IReadOnlyList<TextRecord> Finish()
    {
        policy.Finish();
        return records;
    }
}
