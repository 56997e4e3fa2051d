using System.Globalization;
using System.Text.Json;

namespace Dtrain.Data;

/// <summary>
/// JSON Lines: one JSON object per line (blank lines ignored). The text field must be a non-empty string; the
/// label may be a string, an integer or a boolean and is kept as its string form ("3", "true"). Without
/// <see cref="ReadOptions.QuoteContent"/>, messages name the line, byte and field but quote nothing from the file.
/// </summary>
public static class JsonlReader
{
    public static IReadOnlyList<TextRecord> Read(string path, ReadOptions options, DataReportBuilder report, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var text = DatasetReader.ReadAllText(path, options, cancel);
        DatasetReader.RequireContent(path, text);
        var records = new RecordCollector(path, options, report);
        var lineNo = 0;
        for (var pos = 0; pos <= text.Length;)
        {
            var nl = text.IndexOf('\n', pos);
            var end = nl < 0 ? text.Length : nl;
            var line = text.AsSpan(pos, end - pos);
            if (++lineNo % 4096 == 0) cancel.ThrowIfCancellationRequested();
            if (!line.IsWhiteSpace()) ReadLine(line.TrimEnd('\r'), lineNo, options, records);
            if (nl < 0) break;
            pos = nl + 1;
        }
        return records.Finish();
    }

    static void ReadLine(ReadOnlySpan<char> line, int lineNo, ReadOptions options, RecordCollector records)
    {
        if (ParseLine(line, options, out var text, out var label) is { } problem) records.Bad(lineNo, problem);
        else records.Add(text, label, lineNo);
    }

    /// <summary>
    /// One JSONL line (not blank, without its line end) as a record: its text and label (when <see cref="ReadOptions.LabelField"/>
    /// is set), or what is wrong with it (then null is not returned). Shared with dtrain prepare's streaming reader.
    /// </summary>
    internal static string? ParseLine(ReadOnlySpan<char> line, ReadOptions options, out string text, out string? label)
    {
        text = "";
        label = null;
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(line.ToString());
        }
        catch (JsonException e)
        {
            var at = $"malformed JSON (at byte {(e.BytePositionInLine ?? 0) + 1} of the line)";
            return options.QuoteContent ? $"{at}: {Describe(e)}" : at;
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) return $"expected a JSON object, found {KindName(root, options.QuoteContent)}";
            if (!TryText(root, options.TextField, options.QuoteContent, out text, out var problem)) return problem;
            if (options.LabelField is { } labelField && !TryLabel(root, labelField, options.QuoteContent, out label, out problem)) return problem;
            return null;
        }
    }

    static bool TryText(JsonElement root, string field, bool quote, out string text, out string problem)
    {
        text = "";
        if (!root.TryGetProperty(field, out var value)) { problem = $"missing field '{field}'"; return false; }
        if (value.ValueKind != JsonValueKind.String) { problem = $"field '{field}' must be a string, found {KindName(value, quote)}"; return false; }
        if (!TryGetString(value, field, out text, out problem)) return false;
        if (string.IsNullOrWhiteSpace(text)) { problem = $"field '{field}' is empty"; return false; }
        return true;
    }

    static bool TryLabel(JsonElement root, string field, bool quote, out string? label, out string problem)
    {
        label = null;
        if (!root.TryGetProperty(field, out var value)) { problem = $"missing field '{field}'"; return false; }
        switch (value.ValueKind)
        {
            case JsonValueKind.String:
                if (!TryGetString(value, field, out var s, out problem)) return false;
                label = s;
                break;
            case JsonValueKind.Number when value.TryGetInt64(out var n):
                label = n.ToString(CultureInfo.InvariantCulture);
                break;
            case JsonValueKind.True or JsonValueKind.False:
                label = value.GetBoolean() ? "true" : "false";
                break;
            default:
                problem = $"field '{field}' must be a string, integer or boolean, found {KindName(value, quote)}";
                return false;
        }
        if (string.IsNullOrWhiteSpace(label)) { problem = $"field '{field}' is empty"; return false; }
        problem = "";
        return true;
    }

    static bool TryGetString(JsonElement value, string field, out string text, out string problem)
    {
        try
        {
            text = value.GetString() ?? "";
            problem = "";
            return true;
        }
        catch (InvalidOperationException)
        {
            // e.g. an escaped lone surrogate ("\ud800"), which is not text.
            text = "";
            problem = $"field '{field}' is not valid Unicode text";
            return false;
        }
    }

    static string KindName(JsonElement e, bool quote) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => quote ? $"the number {e.GetRawText()}" : "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => e.ValueKind.ToString(),
    };

    /// <summary>The parser's message without its own (0-based, single-line) position suffix.</summary>
    static string Describe(JsonException e)
    {
        var m = e.Message;
        var cut = m.IndexOf(" LineNumber:", StringComparison.Ordinal);
        return (cut >= 0 ? m[..cut] : m).TrimEnd();
    }
}
