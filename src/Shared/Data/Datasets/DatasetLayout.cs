using System.Text.Json;
using System.Text.Json.Serialization;
using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

/// <summary>Names and constants of the on-disk dataset format (docs/data.md).</summary>
public static class DatasetLayout
{
    public const string FormatName = "dtrain-dataset";
    /// <summary>The format version this build writes and reads.</summary>
    public const int Version = 1;
    public const string ManifestFile = "manifest.json";
    public const string TokenizerFile = "tokenizer.json";
    public const string Uint16 = "uint16", Uint32 = "uint32";
    public const string TrainSplit = "train", ValidationSplit = "validation";

    /// <summary>The width of one id: 2 bytes when the vocabulary fits uint16, else 4.</summary>
    public static int WidthFor(int vocabSize) => vocabSize <= 65536 ? 2 : 4;

    public static string DtypeFor(int vocabSize) => WidthFor(vocabSize) == 2 ? Uint16 : Uint32;

    /// <summary>The manifest's JSON: snake_case names, indented; unknown members are refused when read.</summary>
    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Skip,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>The tokenizer's JSON: the same serialization as a checkpoint's tokenizer.json.</summary>
    public static readonly JsonSerializerOptions TokenizerJson = new(JobSpecSerializer.Options) { UnmappedMemberHandling = JsonUnmappedMemberHandling.Skip };

    public static string ShardName(string split, int index, string extension) => $"{split}-{index:D5}.{extension}";
}
