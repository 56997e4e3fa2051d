using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Dtrain.Specs;

/// <summary>Reads and writes job specs as JSON (snake_case), rejecting unknown fields and invalid values with their paths.</summary>
public static class JobSpecSerializer
{
    public static readonly JsonSerializerOptions Options = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>Parses and validates a spec; throws <see cref="SpecException"/> listing every problem.</summary>
    public static JobSpec Parse(string json, string source = "<spec>")
    {
        var errors = new List<SpecError>();
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new SpecException(source, [new SpecError("$", $"not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): {FirstSentence(e.Message)}")]);
        }
        if (FindDuplicate(json) is { } duplicate) throw new SpecException(source, [duplicate]);
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new SpecException(source, [new SpecError("$", $"expected a JSON object, got {doc.RootElement.ValueKind}")]);
            CheckShape(doc.RootElement, typeof(JobSpec), "$", errors);
        }
        if (errors.Count > 0) throw new SpecException(source, errors);

        JobSpec? spec;
        try
        {
            spec = JsonSerializer.Deserialize<JobSpec>(json, Options);
        }
        catch (JsonException e)
        {
            throw new SpecException(source, [new SpecError(e.Path ?? "$", FirstSentence(e.Message))]);
        }
        if (spec is null) throw new SpecException(source, [new SpecError("$", "spec is null")]);
        errors.AddRange(JobSpecValidator.Validate(spec));
        if (errors.Count > 0) throw new SpecException(source, errors);
        return spec;
    }

    /// <summary>
    /// Reads a spec file, which must be UTF-8 (a byte-order mark is allowed); relative data and output paths stay
    /// relative (see <see cref="JobSpecPaths"/>). A missing file, a directory, an unreadable file or an invalid byte
    /// sequence is a <see cref="SpecException"/> saying which (with the line and column of the bad bytes).
    /// </summary>
    public static JobSpec Load(string path)
    {
        var full = Path.GetFullPath(path);
        if (Directory.Exists(path)) throw new SpecException(path, [new SpecError("$", $"{full} is a directory, not a spec file")]);
        if (!File.Exists(path)) throw new SpecException(path, [new SpecError("$", $"file not found: {full}")]);
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SpecException(path, [new SpecError("$", $"cannot read {full}: {e.Message}")]);
        }
        return Parse(DecodeUtf8(bytes, path), path);
    }

    /// <summary>Strict UTF-8 (after an optional byte-order mark): an invalid byte sequence is an error at its line and column, never a silent U+FFFD.</summary>
    static string DecodeUtf8(byte[] bytes, string source)
    {
        var span = bytes.AsSpan();
        if (span.StartsWith("\uFEFF"u8)) span = span[3..];
        var chars = new char[span.Length];
        var status = System.Text.Unicode.Utf8.ToUtf16(span, chars, out var read, out var written, replaceInvalidSequences: false);
        if (status == System.Buffers.OperationStatus.Done) return new string(chars, 0, written);
        var before = span[..read];
        var line = before.Count((byte)'\n') + 1;
        var column = read - (before.LastIndexOf((byte)'\n') + 1) + 1;
        var bad = string.Join(" ", span.Slice(read, Math.Min(4, span.Length - read)).ToArray().Select(b => $"0x{b:X2}"));
        var hint = bytes is [0xFF, 0xFE, ..] or [0xFE, 0xFF, ..] ? " (the file looks like UTF-16; save it as UTF-8)" : "";
        throw new SpecException(source, [new SpecError("$", $"invalid UTF-8 at line {line}, byte {column} ({bad}): a spec must be UTF-8{hint}")]);
    }

    /// <summary>The first field given twice in one object (JSON allows it, and the last one would silently win), with both lines.</summary>
    static SpecError? FindDuplicate(string json)
    {
        var utf8 = System.Text.Encoding.UTF8.GetBytes(json);
        var reader = new Utf8JsonReader(utf8, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        var frames = new Stack<(string Path, Dictionary<string, long>? Fields, int Index)>();
        string? property = null;
        string Child()
        {
            if (frames.Count == 0) return "$";
            var (path, fields, index) = frames.Pop();
            frames.Push((path, fields, fields is null ? index + 1 : index));
            return fields is null ? $"{path}[{index}]" : $"{path}.{property}";
        }
        while (reader.Read())
        {
            switch (reader.TokenType)
            {
                case JsonTokenType.PropertyName:
                    property = reader.GetString()!;
                    var fields = frames.Peek().Fields!;
                    var at = reader.TokenStartIndex;
                    if (fields.TryGetValue(property, out var first))
                    {
                        long LineOf(long offset) => utf8.AsSpan(0, (int)offset).Count((byte)'\n') + 1;
                        return new SpecError($"{frames.Peek().Path}.{property}",
                            $"duplicate field: given at line {LineOf(first)} and again at line {LineOf(at)}; each field may appear once");
                    }
                    fields[property] = at;
                    break;
                case JsonTokenType.StartObject:
                    frames.Push((Child(), new Dictionary<string, long>(StringComparer.Ordinal), 0));
                    break;
                case JsonTokenType.StartArray:
                    frames.Push((Child(), null, 0));
                    break;
                case JsonTokenType.EndObject or JsonTokenType.EndArray:
                    frames.Pop();
                    break;
                default:
                    if (frames.Count > 0) Child();
                    break;
            }
        }
        return null;
    }

    public static string Serialize(JobSpec spec) => JsonSerializer.Serialize(spec, Options);

    static string FirstSentence(string message)
    {
        var cut = message.IndexOf(". Path:", StringComparison.Ordinal);
        return cut > 0 ? message[..cut] : message;
    }

    /// <summary>Walks the JSON against the record types so unknown fields and wrong kinds are reported with their paths.</summary>
    static void CheckShape(JsonElement element, Type type, string path, List<SpecError> errors)
    {
        var props = type.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .ToDictionary(p => JsonNamingPolicy.SnakeCaseLower.ConvertName(p.Name), p => p);
        foreach (var member in element.EnumerateObject())
        {
            var memberPath = $"{path}.{member.Name}";
            if (!props.TryGetValue(member.Name, out var prop))
            {
                errors.Add(new SpecError(memberPath, $"unknown field; allowed fields here: {string.Join(", ", props.Keys)}"));
                continue;
            }
            var propType = Nullable.GetUnderlyingType(prop.PropertyType) ?? prop.PropertyType;
            var value = member.Value;
            if (value.ValueKind == JsonValueKind.Null)
            {
                if (!IsNullable(prop)) errors.Add(new SpecError(memberPath, "must not be null"));
                continue;
            }
            if (propType == typeof(string))
            {
                if (value.ValueKind != JsonValueKind.String) errors.Add(new SpecError(memberPath, $"expected a string, got {Describe(value)}"));
            }
            else if (propType == typeof(int))
            {
                if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt32(out _)) errors.Add(new SpecError(memberPath, $"expected an integer, got {Describe(value)}"));
            }
            else if (propType == typeof(double))
            {
                if (value.ValueKind != JsonValueKind.Number) errors.Add(new SpecError(memberPath, $"expected a number, got {Describe(value)}"));
            }
            else if (propType == typeof(bool))
            {
                if (value.ValueKind is not (JsonValueKind.True or JsonValueKind.False)) errors.Add(new SpecError(memberPath, $"expected true or false, got {Describe(value)}"));
            }
            else if (propType.IsClass)
            {
                if (value.ValueKind != JsonValueKind.Object) errors.Add(new SpecError(memberPath, $"expected an object, got {Describe(value)}"));
                else CheckShape(value, propType, memberPath, errors);
            }
        }
    }

    static bool IsNullable(PropertyInfo prop)
    {
        if (!prop.PropertyType.IsValueType) return new NullabilityInfoContext().Create(prop).WriteState == NullabilityState.Nullable;
        return Nullable.GetUnderlyingType(prop.PropertyType) is not null;
    }

    static string Describe(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => $"the string \"{Truncate(value.GetString() ?? "")}\"",
        JsonValueKind.Number => $"the number {value.GetRawText()}",
        JsonValueKind.True or JsonValueKind.False => value.GetRawText(),
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        _ => value.ValueKind.ToString().ToLowerInvariant(),
    };

    static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "…";
}
