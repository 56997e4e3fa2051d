using System.Text.Json;
using Dtrain.Specs;
using Dtrain.Training.Tasks;

namespace Dtrain.Data.Datasets;

/// <summary>The token counts of one part of the sources (its training sources), as a worker reports them.</summary>
public sealed record PartCounts
{
    /// <summary>Word tokenizer: each word (lowercased with tokenizer.lowercase) and its count.</summary>
    public Dictionary<string, long> Words { get; init; } = new(StringComparer.Ordinal);
    /// <summary>Char tokenizer: each Unicode scalar value and its count.</summary>
    public Dictionary<int, long> Chars { get; init; } = [];
    /// <summary>Classification: the labels of the part's training records.</summary>
    public IReadOnlyList<string> TrainLabels { get; init; } = [];
    /// <summary>Whether the part's training (validation) sources hold any record: a language model's records are joined with "\n" across parts.</summary>
    public bool TrainPieces { get; init; }
    public bool ValidationPieces { get; init; }
}

/// <summary>What encoding one part wrote: its shards of each split (in order), its sources as stored, and its records read and skipped.</summary>
public sealed record PartEncoded
{
    public required DatasetSplit Train { get; init; }
    public required DatasetSplit Validation { get; init; }
    public required IReadOnlyList<DatasetSource> Sources { get; init; }
    public required DataReport Report { get; init; }
}

/// <summary>
/// Entry points of <c>dtrain prepare --on-cluster</c>: the sources, in order, are cut into contiguous parts (each a
/// worker's); each part is counted (<see cref="CountPart"/>), the counts merged into the tokenizer as a local prepare
/// fits it (<see cref="FitParts"/>), then each part encoded into its own shards (<see cref="EncodePart"/>). A language
/// model's records are joined with "\n" across parts exactly as across sources, so the ids, concatenated in part order,
/// are those of a local prepare; only the shard boundaries differ (each part starts its own shards).
/// </summary>
public static partial class DatasetPreparer
{
    /// <summary>Checks the options of a whole prepare (all sources) as <see cref="Prepare"/> does.</summary>
    public static void CheckOptions(PrepareOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        Check(o);
    }

    /// <summary>The options of a part as they travel to a worker (JSON; the sources are the part's).</summary>
    public static string PartJson(PrepareOptions part) => JsonSerializer.Serialize(part, DatasetLayout.Json);

    public static PrepareOptions PartFromJson(string json) =>
        JsonSerializer.Deserialize<PrepareOptions>(json, DatasetLayout.Json) ?? throw new ArgumentException("no prepare options");

    static ReadOptions ReadFor(PrepareOptions o, ITrainingTask task) => new()
    {
        TextField = o.TextField,
        LabelField = task.HasLabels ? o.LabelField : null,
        MaxLength = task.PredictsNextToken ? 0 : o.MaxLength,
        Overlength = o.Overlength,
        OnError = o.OnError,
    };

    static ITrainingTask TaskOf(PrepareOptions o) =>
        TrainingTasks.Find(o.Task) ?? throw new ArgumentException($"--task \"{o.Task}\" must be {string.Join(" or ", TrainingTasks.All.Select(t => t.Kind))}");

    /// <summary>Where a language model's part stands in the whole text, once a fraction is held out: whether it is joined to earlier records, and where validation starts in it.</summary>
    public readonly record struct PartCut(bool Joiner, long Cut, bool AllValidation);

    /// <summary>Pass 1 of a language model holding out a fraction, on one part: the length of its joined training text (without a leading joiner), and whether it holds a record.</summary>
    public static (long Length, bool Pieces) MeasurePart(PrepareOptions part, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(part);
        return TextLength(part.Train, ReadFor(part, TaskOf(part)), cancel);
    }

    /// <summary>
    /// The cut of a language model's held-out fraction placed as pass 1 of <see cref="Prepare"/> places it in the whole
    /// text (the parts' texts joined with "\n"), as seen by each part: a part joined to earlier records starts with that
    /// "\n"; a part after the cut is all validation; the part holding it is cut at its own offset.
    /// </summary>
    public static IReadOnlyList<PartCut> PlaceCut(PrepareOptions o, IReadOnlyList<(long Length, bool Pieces)> parts)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(parts);
        var starts = new long[parts.Count];
        var lengths = new long[parts.Count];
        long total = 0;
        var any = false;
        for (var k = 0; k < parts.Count; k++)
        {
            starts[k] = total;
            lengths[k] = parts[k].Length + (any && parts[k].Pieces ? 1 : 0);
            total += lengths[k];
            any |= parts[k].Pieces;
        }
        var validationLength = Math.Clamp((long)Math.Ceiling(o.ValidationFraction * total - 1e-9), 1, Math.Max(1, total - 1));
        var cut = total - validationLength;
        if (cut <= 0) throw new DataFormatException(o.Train[0].Path, 0, $"the text is {total} character(s) long, too short to split into training and validation");
        var joined = false;
        var result = new List<PartCut>();
        for (var k = 0; k < parts.Count; k++)
        {
            var local = cut - starts[k];
            result.Add(new PartCut(joined && parts[k].Pieces, local >= lengths[k] ? -1 : Math.Max(0, local), local <= 0));
            joined |= parts[k].Pieces;
        }
        return result;
    }

    /// <summary>
    /// Counts the tokens of the part's training sources as pass 2 of <see cref="Prepare"/> does (validation sources are only
    /// read far enough to know whether they hold a record). With a held-out fraction, <paramref name="at"/> says where the
    /// part stands (<see cref="PlaceCut"/>): only its text before the cut is counted, its leading joiner included.
    /// </summary>
    public static PartCounts CountPart(PrepareOptions part, PartCut? at = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(part);
        var task = TaskOf(part);
        var read = ReadFor(part, task);
        var word = part.Tokenizer.Kind == TokenizerKinds.Word;
        var tokenizing = new Tokenizing(part.Tokenizer, Math.Max(1, part.Threads));
        var trainPieces = false;
        var labels = new SortedSet<string>(StringComparer.Ordinal);
        IEnumerable<TextPiece> Seen(IEnumerable<TextPiece> pieces)
        {
            foreach (var p in pieces)
            {
                trainPieces = true;
                yield return p;
            }
        }
        var pieces = Seen(Pieces(part.Train, read, new DataReportBuilder(), null, cancel));
        if (task.PredictsNextToken)
        {
            var chunks = at is { } p
                ? new TextChunker(word, part.ChunkChars).Chunks(Joined(pieces, p.Joiner), p.AllValidation ? -1 : p.Cut, p.AllValidation)
                : new TextChunker(word, part.ChunkChars).Chunks(pieces, -1, allValidation: false);
            CountText(tokenizing, chunks, cancel);
        }
        else CountRecords(tokenizing, Batches(pieces, null, false, l => labels.Add(l)), cancel);
        var validationPieces = Pieces(part.Validation, read, new DataReportBuilder(), null, cancel).Any();
        var counts = new PartCounts { TrainLabels = [.. labels], TrainPieces = trainPieces, ValidationPieces = validationPieces };
        foreach (var s in tokenizing.Workers)
        {
            foreach (var (k, v) in s.Words.ToDictionary()) counts.Words[k] = counts.Words.GetValueOrDefault(k) + v;
            for (var i = 0; i < s.Dense.Length; i++)
                if (s.Dense[i] > 0) counts.Chars[i] = counts.Chars.GetValueOrDefault(i) + s.Dense[i];
            foreach (var (k, v) in s.Sparse) counts.Chars[k] = counts.Chars.GetValueOrDefault(k) + v;
        }
        return counts;
    }

    /// <summary>
    /// The tokenizer (and, for classification, the labels) a local prepare fits from the same sources: the parts' counts
    /// summed, plus the "\n" that joins a language model's records across parts. <paramref name="o"/> holds all sources.
    /// </summary>
    /// <param name="joinersCounted">The parts counted their joiners themselves (<see cref="PartCut"/>).</param>
    public static (ITokenizer Tokenizer, LabelSet Labels) FitParts(PrepareOptions o, IReadOnlyList<PartCounts> parts, bool joinersCounted = false)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(parts);
        var task = Check(o);
        var tokenizing = new Tokenizing(o.Tokenizer, 1);
        var all = tokenizing.Workers[0];
        foreach (var p in parts)
        {
            foreach (var (k, v) in p.Words) all.Words.GetOrAdd(k) += v;
            foreach (var (k, v) in p.Chars)
            {
                if (k < 0 || k > 0x10FFFF || k is >= 0xD800 and <= 0xDFFF) throw new InvalidDataException($"a part's counts hold {k}, not a Unicode scalar value");
                if (o.Tokenizer.Kind == TokenizerKinds.Word) continue;
                if (k < all.Dense.Length) all.Dense[k] += v;
                else all.Sparse[k] = all.Sparse.GetValueOrDefault(k) + v;
            }
        }
        if (task.PredictsNextToken && !joinersCounted)
            for (var joins = parts.Count(p => p.TrainPieces) - 1; joins > 0; joins--) tokenizing.Count(0, "\n");
        var tokenizer = tokenizing.Fit();
        if (tokenizer.VocabSize < 3) throw new ArgumentException(VocabularyProblem(o));
        if (!task.HasLabels) return (tokenizer, LabelSet.Empty);
        var labels = new LabelSet(new SortedSet<string>(parts.SelectMany(p => p.TrainLabels), StringComparer.Ordinal));
        if (labels.Count < 2)
            throw new DataFormatException(o.Train[0].Path, 0, $"classification needs at least 2 distinct labels in the training split, found {labels.Count}");
        return (tokenizer, labels);
    }

    /// <summary>The file name prefix of a part's shards of <paramref name="split"/> before they are renamed into place.</summary>
    public static string PartShardPrefix(string split, int part) => $"{split}.part{part:D5}";

    /// <summary>
    /// Encodes the part's sources with <paramref name="tokenizer"/> into shards written into <paramref name="directory"/>
    /// (named with <see cref="PartShardPrefix"/>), as pass 3 of <see cref="Prepare"/> does.
    /// <paramref name="trainJoiner"/> (<paramref name="validationJoiner"/>): an earlier part holds training (validation)
    /// records, so the part's first one is joined to them with "\n" (language model).
    /// </summary>
    /// <param name="cut">A language model holding out a fraction: where validation starts in the part's text (<see cref="PlaceCut"/>); -1: nowhere.</param>
    /// <param name="allValidation">The part lies after the cut.</param>
    public static PartEncoded EncodePart(PrepareOptions part, int index, string directory, ITokenizer tokenizer, IReadOnlyList<string> labels, bool trainJoiner, bool validationJoiner, long cut, bool allValidation, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(part);
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (!System.IO.Directory.Exists(directory)) throw new DirectoryNotFoundException($"{directory}: the dataset's temporary directory does not exist here (is the data root shared at the same path?)");
        var task = TaskOf(part);
        var read = ReadFor(part, task);
        var word = part.Tokenizer.Kind == TokenizerKinds.Word;
        if (tokenizer.Kind != part.Tokenizer.Kind) throw new ArgumentException($"a {tokenizer.Kind} tokenizer was sent for --tokenizer {part.Tokenizer.Kind}");
        var tokenizing = new Tokenizing(part.Tokenizer, Math.Max(1, part.Threads));
        tokenizing.Use(tokenizer);
        var width = DatasetLayout.WidthFor(tokenizer.VocabSize);
        var report = new DataReportBuilder();
        var sources = new List<DatasetSource>();
        var records = task.HasLabels;
        using var train = new DatasetSplitWriter(directory, PartShardPrefix(DatasetLayout.TrainSplit, index), width, records, part.ShardTokens, part.BlockBytes);
        using var validation = new DatasetSplitWriter(directory, PartShardPrefix(DatasetLayout.ValidationSplit, index), width, records, part.ShardTokens, part.BlockBytes);
        if (task.PredictsNextToken)
        {
            var chunks = new TextChunker(word, part.ChunkChars).Chunks(Joined(Pieces(part.Train, read, report, sources, cancel), trainJoiner), allValidation || cut <= 0 ? -1 : cut, allValidation);
            if (part.Validation.Count > 0)
                chunks = chunks.Concat(new TextChunker(word, part.ChunkChars).Chunks(Joined(Pieces(part.Validation, read, report, sources, cancel), validationJoiner), -1, allValidation: true));
            EncodeText(tokenizing, chunks, train, validation, cancel);
        }
        else
        {
            var labelSet = new LabelSet(labels);
            var batches = Batches(Pieces(part.Train, read, report, sources, cancel), null, false, null);
            if (part.Validation.Count > 0) batches = batches.Concat(Batches(Pieces(part.Validation, read, report, sources, cancel), null, true, null));
            EncodeRecords(batches, tokenizing, labelSet, train, validation, "", cancel);
        }
        return new PartEncoded { Train = train.Finish(), Validation = validation.Finish(), Sources = sources, Report = report.ToReport() };
    }

    /// <summary>
    /// The pieces, after an empty end of record when an earlier part holds records: <see cref="TextChunker"/> then puts
    /// the "\n" that joins records before the part's first piece, as it does between sources in one stream.
    /// </summary>
    static IEnumerable<TextPiece> Joined(IEnumerable<TextPiece> pieces, bool joiner)
    {
        var first = true;
        foreach (var p in pieces)
        {
            if (first && joiner) yield return new TextPiece(ReadOnlyMemory<char>.Empty, true, null, p.File, p.Line);
            first = false;
            yield return p;
        }
    }

    /// <summary>The dataset's manifest and tokenizer from the parts' results, in part order, with their shards renamed in order (train-00000..., as a local prepare names them) inside <paramref name="writer"/>'s directory.</summary>
    public static DatasetManifest CommitParts(PrepareOptions o, DatasetWriter writer, ITokenizer tokenizer, LabelSet labels, IReadOnlyList<PartEncoded> parts)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(writer);
        ArgumentNullException.ThrowIfNull(parts);
        var task = Check(o);
        DatasetSplit Join(string split, Func<PartEncoded, DatasetSplit> of)
        {
            var shards = new List<DatasetShard>();
            foreach (var s in parts.SelectMany(p => of(p).Shards))
            {
                var index = shards.Count;
                DatasetFile? Move(DatasetFile? f, string extension)
                {
                    if (f is null) return null;
                    var name = DatasetLayout.ShardName(split, index, extension);
                    if (Path.GetFileName(f.Name) != f.Name || !f.Name.StartsWith(split + ".part", StringComparison.Ordinal))
                        throw new InvalidDataException($"a worker reported shard \"{f.Name}\", not one of the {split} split's");
                    var from = Path.Combine(writer.Directory, f.Name);
                    var bytes = new FileInfo(from).Length;
                    if (bytes != f.Bytes) throw new InvalidDataException($"{f.Name}: {bytes:N0} bytes, the worker reported {f.Bytes:N0}");
                    if (f.BlockBytes != o.BlockBytes || f.BlockSha256 is null || f.BlockSha256.Count != DatasetFile.BlockCount(f.Bytes, o.BlockBytes))
                        throw new InvalidDataException($"{f.Name}: the worker reported no SHA-256 for each block of {o.BlockBytes} bytes (format version {DatasetLayout.Version}): is it an older dtrain?");
                    File.Move(from, Path.Combine(writer.Directory, name));
                    return f with { Name = name };
                }
                shards.Add(s with { Tokens = Move(s.Tokens, "tokens")!, Offsets = Move(s.Offsets, "offsets"), Labels = Move(s.Labels, "labels") });
            }
            return new DatasetSplit { Tokens = parts.Sum(p => of(p).Tokens), Records = parts.Sum(p => of(p).Records), Shards = shards };
        }
        var train = Join(DatasetLayout.TrainSplit, p => p.Train);
        var validation = Join(DatasetLayout.ValidationSplit, p => p.Validation);
        if (task.PredictsNextToken && validation.Tokens < 2)
            throw new DataFormatException((o.Validation.Count > 0 ? o.Validation : o.Train)[^1].Path, 0,
                $"the validation split has {validation.Tokens} token(s); raise --validation-fraction or give a longer validation source");
        var examples = parts.SelectMany(p => p.Report.SkippedExamples).Take(DataReportBuilder.MaxExamples).ToList();
        var report = new DataReport(parts.Sum(p => p.Report.Read), parts.Sum(p => p.Report.Skipped), parts.Sum(p => p.Report.Truncated), examples);
        var tokenizerFile = writer.WriteFile(DatasetLayout.TokenizerFile, JsonSerializer.SerializeToUtf8Bytes(tokenizer.ToState(), DatasetLayout.TokenizerJson));
        var manifest = new DatasetManifest
        {
            TokenDtype = DatasetLayout.DtypeFor(tokenizer.VocabSize),
            VocabSize = tokenizer.VocabSize,
            Tokenizer = tokenizerFile,
            Labels = labels.Names,
            Settings = SettingsOf(o, task),
            Sources = [.. parts.SelectMany(p => p.Sources)],
            Train = train,
            Validation = validation,
            Report = report,
        };
        writer.Commit(manifest);
        return manifest;
    }
}
