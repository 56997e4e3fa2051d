using System.Text.Json;
using System.Text.Json.Serialization;
using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

/// <summary>Names and constants of the on-disk dataset format (docs/data.md).</summary>
public static class DatasetLayout
{
    public const string FormatName = "dtrain-dataset";
    /// <summary>The format version this build writes; it reads <see cref="MinVersion"/> to this one.</summary>
    public const int Version = 2;
    /// <summary>The oldest format version this build reads: version 1 records no block hashes (its files are checked whole).</summary>
    public const int MinVersion = 1;
    /// <summary>
    /// Version 2: each shard file's SHA-256 is also recorded per block of this many bytes (the last block shorter), the
    /// size of the blocks an <see cref="Storage.S3DatasetStore"/> fetches and caches, so a job checks exactly the blocks it reads.
    /// </summary>
    public const int BlockBytes = 8 << 20;
    /// <summary>The largest block size a manifest may give (a block is fetched and hashed as one piece).</summary>
    public const int MaxBlockBytes = 1 << 30;
    public const string ManifestFile = "manifest.json";
    public const string TokenizerFile = "tokenizer.json";
    public const string Uint8 = "uint8", Uint16 = "uint16", Uint32 = "uint32";
    public const string TrainSplit = "train", ValidationSplit = "validation";

    /// <summary>
    /// The width a writer gives one id: the narrowest that holds every id of the vocabulary — 1 byte for at most 256
    /// tokens (a char vocabulary), 2 for at most 65,536, else 4.
    /// </summary>
    public static int WidthFor(int vocabSize) => vocabSize <= 256 ? 1 : vocabSize <= 65536 ? 2 : 4;

    /// <summary>The manifest's <c>token_dtype</c> a writer gives a vocabulary of <paramref name="vocabSize"/> tokens (<see cref="WidthFor"/>).</summary>
    public static string DtypeFor(int vocabSize) => WidthFor(vocabSize) switch { 1 => Uint8, 2 => Uint16, _ => Uint32 };

    /// <summary>Bytes per id of a manifest's <c>token_dtype</c>; null for a name this build does not know.</summary>
    public static int? WidthOf(string? dtype) => dtype switch { Uint8 => 1, Uint16 => 2, Uint32 => 4, _ => null };

    /// <summary>The largest vocabulary whose ids fit <paramref name="width"/> bytes (1, 2 or 4).</summary>
    public static long MaxVocabulary(int width) => width == 4 ? int.MaxValue : 1L << (8 * width);

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
