using System.Text.Json;
using System.Text.Json.Serialization;

namespace Dtrain.Serving;

/// <summary>POST /v1/predict: texts to classify and how many labels to return for each.</summary>
public sealed record PredictRequest
{
    /// <summary>1 to the server's limit (default 1024) texts, each at most the model's data.max_length characters.</summary>
    [JsonPropertyName("texts")] public required IReadOnlyList<string> Texts { get; init; }
    /// <summary>Labels per text, most probable first (1 to the number of labels; default 3 or all when fewer).</summary>
    [JsonPropertyName("top_k")] public int? TopK { get; init; }
}

/// <summary>A label and its probability.</summary>
public sealed record LabelProbability([property: JsonPropertyName("label")] string Label, [property: JsonPropertyName("probability")] double Probability);

/// <summary>One text's predicted label, its probability, and the top_k most probable labels.</summary>
public sealed record TextPrediction(
    [property: JsonPropertyName("label")] string Label,
    [property: JsonPropertyName("probability")] double Probability,
    [property: JsonPropertyName("top")] IReadOnlyList<LabelProbability> Top);

/// <summary>The answer of /v1/predict: one prediction per text, in order.</summary>
public sealed record PredictResponse([property: JsonPropertyName("predictions")] IReadOnlyList<TextPrediction> Predictions);

/// <summary>POST /v1/generate: sample text from a language model, as `dtrain generate` does.</summary>
public sealed record GenerateRequest
{
    /// <summary>Text to start from (default empty), at most the model's data.max_length characters.</summary>
    [JsonPropertyName("prompt")] public string? Prompt { get; init; }
    /// <summary>Tokens to generate (default 300; 1 to the server's --max-length).</summary>
    [JsonPropertyName("length")] public int? Length { get; init; }
    /// <summary>Sampling temperature, 0 or more (default 0.8; 0 = always the most likely token).</summary>
    [JsonPropertyName("temperature")] public double? Temperature { get; init; }
    /// <summary>Sample among the k most likely tokens (default 0 = all).</summary>
    [JsonPropertyName("top_k")] public int? TopK { get; init; }
    /// <summary>Random seed (default 1): the same seed gives the same text.</summary>
    [JsonPropertyName("seed")] public long? Seed { get; init; }
    /// <summary>Stream the text as NDJSON lines ({"text": piece} per token, then {"done": true, ...}).</summary>
    [JsonPropertyName("stream")] public bool? Stream { get; init; }
}

/// <summary>The answer of /v1/generate (and the last NDJSON line of a stream, with "done": true).</summary>
public sealed record GenerateResponse(
    [property: JsonPropertyName("text")] string Text,
    [property: JsonPropertyName("tokens")] int Tokens,
    [property: JsonPropertyName("done")] bool Done = true);

/// <summary>An error: what is wrong and, for a bad request, the JSON path of the field (e.g. "$.texts[2]").</summary>
public sealed record ErrorResponse(
    [property: JsonPropertyName("error")] string Error,
    [property: JsonPropertyName("field"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Field = null);

/// <summary>
/// The answers' JSON serialization, generated at build time: a response is written straight to the body, without the
/// reflection-based serializer's per-call property accessors (the answers are the same bytes).
/// </summary>
[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(PredictResponse))]
[JsonSerializable(typeof(GenerateResponse))]
[JsonSerializable(typeof(ErrorResponse))]
internal sealed partial class ServingJson : JsonSerializerContext;

/// <summary>A request body that is not acceptable, naming the field.</summary>
public sealed class BadRequestException(string field, string message) : Exception(message)
{
    public string Field { get; } = field;
}

/// <summary>
/// Reads request bodies field by field, so that every problem names its field: unknown fields, wrong JSON types,
/// empty or too long texts, values out of range.
/// </summary>
public static class RequestReader
{
    public const int DefaultTopK = 3;
    public const int DefaultLength = 300;

    public static PredictRequest Predict(JsonElement root, int maxLength, int labels, int maxTexts)
    {
        Object(root);
        IReadOnlyList<string>? texts = null;
        int? topK = null;
        foreach (var p in root.EnumerateObject())
        {
            var field = "$." + p.Name;
            switch (p.Name)
            {
                case "texts":
                    if (p.Value.ValueKind != JsonValueKind.Array) throw new BadRequestException(field, $"{field} must be an array of strings, not {Kind(p.Value)}");
                    var list = new List<string>();
                    var i = 0;
                    foreach (var t in p.Value.EnumerateArray())
                    {
                        var at = $"{field}[{i++}]";
                        if (t.ValueKind != JsonValueKind.String) throw new BadRequestException(at, $"{at} must be a string, not {Kind(t)}");
                        list.Add(CheckText(t.GetString()!, at, maxLength));
                    }
                    texts = CheckTexts(list, field, maxLength, maxTexts);
                    break;
                case "top_k":
                    topK = Int(p.Value, field, 1, labels, $"1 to the model's {labels} labels");
                    break;
                default:
                    throw Unknown(field, "texts, top_k");
            }
        }
        if (texts is null) throw new BadRequestException("$.texts", "$.texts is required: an array of texts to classify");
        return new PredictRequest { Texts = texts, TopK = topK };
    }

    public static GenerateRequest Generate(JsonElement root, int maxPrompt, int maxGenerate)
    {
        Object(root);
        var request = new GenerateRequest();
        foreach (var p in root.EnumerateObject())
        {
            var field = "$." + p.Name;
            var v = p.Value;
            request = p.Name switch
            {
                "prompt" => request with { Prompt = Prompt(v, field, maxPrompt) },
                "length" => request with { Length = Int(v, field, 1, maxGenerate, $"1 to {maxGenerate} tokens (the server's --max-length)") },
                "temperature" => request with { Temperature = Temperature(v, field) },
                "top_k" => request with { TopK = Int(v, field, 0, int.MaxValue, "0 (all tokens) or more") },
                "seed" => request with { Seed = v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out var seed) ? seed : throw new BadRequestException(field, $"{field} must be an integer (64-bit), not {Kind(v)}") },
                "stream" => request with { Stream = v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw new BadRequestException(field, $"{field} must be true or false, not {Kind(v)}") },
                _ => throw Unknown(field, "prompt, length, temperature, top_k, seed, stream"),
            };
        }
        return request;
    }

    /// <summary>
    /// A request that arrived typed (gRPC): the same checks and messages as the JSON one, its fields named without the
    /// JSON path's "$." (texts[2], top_k).
    /// </summary>
    public static PredictRequest Predict(IReadOnlyList<string> texts, int? topK, int maxLength, int labels, int maxTexts)
    {
        var checkedTexts = CheckTexts(texts, "texts", maxLength, maxTexts);
        if (topK is { } k) CheckRange(k, "top_k", 1, labels, $"1 to the model's {labels} labels");
        return new PredictRequest { Texts = checkedTexts, TopK = topK };
    }

    /// <summary>A typed generation request (gRPC), checked as the JSON one; fields named prompt, length, temperature, top_k.</summary>
    public static GenerateRequest Generate(string? prompt, int? length, double? temperature, int? topK, long? seed, int maxPrompt, int maxGenerate)
    {
        if (prompt is not null) CheckText(prompt, "prompt", maxPrompt);
        if (length is { } n) CheckRange(n, "length", 1, maxGenerate, $"1 to {maxGenerate} tokens (the server's --max-length)");
        if (temperature is { } t) CheckTemperature(t, "temperature");
        if (topK is { } k) CheckRange(k, "top_k", 0, int.MaxValue, "0 (all tokens) or more");
        return new GenerateRequest { Prompt = prompt, Length = length, Temperature = temperature, TopK = topK, Seed = seed };
    }

    static IReadOnlyList<string> CheckTexts(IReadOnlyList<string> texts, string field, int maxLength, int maxTexts)
    {
        if (texts.Count == 0) throw new BadRequestException(field, $"{field} is empty: give at least one text");
        if (texts.Count > maxTexts) throw new BadRequestException(field, $"{field} holds {texts.Count} texts: at most {maxTexts} per request");
        for (var i = 0; i < texts.Count; i++) CheckText(texts[i], $"{field}[{i}]", maxLength);
        return texts;
    }

    static string CheckText(string s, string field, int maxLength) =>
        s.Length <= maxLength ? s : throw new BadRequestException(field, $"{field} is {s.Length} characters long: the model's data.max_length is {maxLength}");

    static int CheckRange(long n, string field, int min, int max, string range) =>
        n >= min && n <= max ? (int)n : throw new BadRequestException(field, $"{field} is {n}: it must be {range}");

    static double CheckTemperature(double t, string field) =>
        t >= 0 && double.IsFinite(t) ? t : throw new BadRequestException(field, $"{field} is {t}: it must be 0 or more");

    static string Prompt(JsonElement v, string field, int max)
    {
        if (v.ValueKind != JsonValueKind.String) throw new BadRequestException(field, $"{field} must be a string, not {Kind(v)}");
        return CheckText(v.GetString()!, field, max);
    }

    static double Temperature(JsonElement v, string field)
    {
        if (v.ValueKind != JsonValueKind.Number) throw new BadRequestException(field, $"{field} must be a number, not {Kind(v)}");
        return CheckTemperature(v.GetDouble(), field);
    }

    static void Object(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new BadRequestException("$", $"$ (the request body) must be a JSON object, not {Kind(root)}");
    }

    static int Int(JsonElement v, string field, int min, int max, string range)
    {
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out var n)) throw new BadRequestException(field, $"{field} must be an integer, not {Kind(v)}");
        return CheckRange(n, field, min, max, range);
    }

    static BadRequestException Unknown(string field, string known) => new(field, $"{field} is not a field of this request (known: {known})");

    static string Kind(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.Number => $"the number {v.GetRawText()}",
        JsonValueKind.String => "a string",
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => v.ValueKind.ToString(),
    };
}
