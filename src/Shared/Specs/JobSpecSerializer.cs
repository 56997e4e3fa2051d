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

    /// <summary>Reads a spec file; relative data and output paths stay relative (see <see cref="JobSpecPaths"/>).</summary>
    public static JobSpec Load(string path)
    {
        if (!File.Exists(path)) throw new SpecException(path, [new SpecError("$", $"file not found: {Path.GetFullPath(path)}")]);
        return Parse(File.ReadAllText(path), path);
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
