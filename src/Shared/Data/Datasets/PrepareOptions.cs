using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

/// <summary>What <c>dtrain prepare</c> does: its sources, output and the job-spec options that decide the ids (see <see cref="DatasetSettings"/>).</summary>
public sealed record PrepareOptions
{
    /// <summary>The training sources, in order (see <see cref="SourceFiles.Expand"/>).</summary>
    public required IReadOnlyList<SourceFile> Train { get; init; }
    /// <summary>data.validation: separate validation sources; empty to hold out <see cref="ValidationFraction"/> of the training data.</summary>
    public IReadOnlyList<SourceFile> Validation { get; init; } = [];
    public required string Output { get; init; }
    public bool Force { get; init; }
    public string Task { get; init; } = TaskKinds.LanguageModel;
    public string TextField { get; init; } = "text";
    public string LabelField { get; init; } = "label";
    public int MaxLength { get; init; } = 2000;
    public string Overlength { get; init; } = OverlengthPolicies.Truncate;
    public string OnError { get; init; } = ErrorPolicies.Fail;
    public double ValidationFraction { get; init; } = 0.05;
    public int Seed { get; init; } = 1;
    public TokenizerSpec Tokenizer { get; init; } = new();
    /// <summary>Tokenizing threads (1: everything on the calling thread), at most <see cref="MaxThreads"/>.</summary>
    public int Threads { get; init; } = 1;
    /// <summary>The most tokenizing threads (as `dtrain cluster run --threads`): each holds a few ranges or chunks of a few MiB in flight.</summary>
    public const int MaxThreads = 1024;
    /// <summary>Most tokens per shard.</summary>
    public long ShardTokens { get; init; } = 1L << 26;
    /// <summary>Characters per unit of parallel work.</summary>
    public int ChunkChars { get; init; } = TextChunker.DefaultChunkChars;
    /// <summary>The block size of the shard files' block hashes (the manifest's block_bytes): <see cref="DatasetLayout.BlockBytes"/>; smaller in tests.</summary>
    public int BlockBytes { get; init; } = DatasetLayout.BlockBytes;
    /// <summary>Bytes per range when a language model's sources are all uncompressed plain text (<see cref="TextRanges"/>); smaller in tests.</summary>
    internal int RangeBytes { get; init; } = TextRanges.DefaultRangeBytes;
    /// <summary>Characters of a range decoded at a time (<see cref="RangeText"/>): small enough to stay in a core's cache; smaller in tests.</summary>
    internal int PieceChars { get; init; } = 1 << 15;
    /// <summary>Read every source as one stream even when <see cref="TextRanges"/> could read it in ranges (tests compare the two).</summary>
    internal bool StreamOnly { get; init; }
}
