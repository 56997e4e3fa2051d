using System.Buffers;
using System.Diagnostics;
using System.Text.Json;
using Dtrain.Specs;
using Dtrain.Training.Tasks;

namespace Dtrain.Data.Datasets;

/// <summary>
/// <c>dtrain prepare</c>: turns sources into a dataset (docs/data.md) holding exactly the ids the in-memory path
/// (<see cref="DatasetLoader"/> and <see cref="Training.PreparedData"/>) makes from the same data and options, in
/// constant memory. Passes over the sources: (1, only when a fraction is held out) the length of a language model's
/// joined text or the labels of the classification records, to place the split as the in-memory path does; (2) the
/// token counts of the training split, on every thread, for the vocabulary; (3) encoding on every thread, written in
/// order into shards. The output does not depend on the number of threads.
/// </summary>
public static partial class DatasetPreparer
{
    /// <summary>Prepares the dataset and returns its manifest; <paramref name="log"/> is told of each pass.</summary>
    public static DatasetManifest Prepare(PrepareOptions o, Action<string>? log = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        log ??= _ => { };
        var task = Check(o);
        using var writer = new DatasetWriter(o.Output, o.Force);
        var read = new ReadOptions
        {
            TextField = o.TextField,
            LabelField = task.HasLabels ? o.LabelField : null,
            MaxLength = task.PredictsNextToken ? 0 : o.MaxLength,
            Overlength = o.Overlength,
            OnError = o.OnError,
        };
        var clock = Stopwatch.StartNew();
        // The JSON writers' first use in a process (their metadata and code: ~0.07 s of one thread, a 600 MB char
        // prepare's last 4 % on 2 cores) is paid on another thread while the passes run, rather than after them with
        // every other core idle. Not waited for: the writers below share what it has done so far (a thread-safe cache).
        if (o.Threads > 1) _ = Task.Run(WarmJson);
        var result = task.PredictsNextToken ? LanguageModel(o, read, writer, log, cancel) : Classification(o, read, writer, log, cancel);
        var tokenizerFile = writer.WriteFile(DatasetLayout.TokenizerFile, JsonSerializer.SerializeToUtf8Bytes(result.Tokenizer.ToState(), DatasetLayout.TokenizerJson));
        var manifest = new DatasetManifest
        {
            TokenDtype = DatasetLayout.DtypeFor(result.Tokenizer.VocabSize),
            VocabSize = result.Tokenizer.VocabSize,
            Tokenizer = tokenizerFile,
            Labels = result.Labels.Names,
            Settings = SettingsOf(o, task),
            Sources = result.Sources,
            Train = result.Train,
            Validation = result.Validation,
            Report = result.Report,
        };
        writer.Commit(manifest);
        log($"prepared {o.Output} in {clock.Elapsed.TotalSeconds:F1} s: train {manifest.Train.Tokens:N0} tokens in {manifest.Train.Shards.Count} shard(s), validation {manifest.Validation.Tokens:N0}; vocabulary {manifest.VocabSize:N0} ({manifest.TokenDtype})");
        return manifest;
    }

    /// <summary>Serializes a small tokenizer and manifest as <see cref="Prepare"/> writes them, so that their first use is done (a failure here is the real writers' to report).</summary>
    static void WarmJson()
    {
        try
        {
            var file = new DatasetFile("f", 1, "0") { BlockBytes = 1, BlockSha256 = ["0"] };
            var split = new DatasetSplit { Tokens = 1, Shards = [new DatasetShard { Tokens = file, TokenCount = 1, Offsets = file, Labels = file }] };
            _ = JsonSerializer.SerializeToUtf8Bytes(new TokenizerState(TokenizerKinds.Char, false, ["a"]), DatasetLayout.TokenizerJson);
            _ = JsonSerializer.SerializeToUtf8Bytes(new DatasetManifest
            {
                TokenDtype = DatasetLayout.DtypeFor(2),
                VocabSize = 1,
                Tokenizer = file,
                Labels = ["a"],
                Settings = new DatasetSettings(),
                Sources = [new DatasetSource("p", "train", "text", "none", 1, "0")],
                Train = split,
                Validation = split,
                Report = new DataReport(1, 0, 0, ["a"]),
            }, DatasetLayout.Json);
        }
        catch (Exception)
        {
            // Only a head start: the real writers, which run regardless, report any failure.
        }
    }

    /// <summary>The settings a dataset prepared with <paramref name="o"/> for <paramref name="task"/> records in its manifest (local and on the cluster alike).</summary>
    static DatasetSettings SettingsOf(PrepareOptions o, ITrainingTask task) => new()
    {
        Task = o.Task,
        TextField = o.TextField,
        LabelField = task.HasLabels ? o.LabelField : null,
        MaxLength = task.PredictsNextToken ? 0 : o.MaxLength,
        Overlength = o.Overlength,
        OnError = o.OnError,
        ValidationFraction = o.Validation.Count > 0 ? 0 : o.ValidationFraction,
        Seed = o.Seed,
        Tokenizer = o.Tokenizer,
        ShardTokens = o.ShardTokens,
    };

    /// <summary>Checks the options and returns their task.</summary>
    static ITrainingTask Check(PrepareOptions o)
    {
        if (o.Train.Count == 0) throw new ArgumentException("no sources: name at least one file, directory or glob");
        var task = TrainingTasks.Find(o.Task) ?? throw new ArgumentException($"--task \"{o.Task}\" must be {string.Join(" or ", TrainingTasks.All.Select(t => t.Kind))}");
        if (o.Tokenizer.Kind is not (TokenizerKinds.Char or TokenizerKinds.Word)) throw new ArgumentException($"--tokenizer \"{o.Tokenizer.Kind}\" must be char or word");
        if (o.Tokenizer.MinFrequency < 1) throw new ArgumentException($"--min-frequency {o.Tokenizer.MinFrequency} must be at least 1");
        if (o.Tokenizer.MaxVocab is < 0 or 1 or 2) throw new ArgumentException($"--max-vocab {o.Tokenizer.MaxVocab} must be 0 (no limit) or at least 3: <pad> and <unk> take two ids");
        if (!OverlengthPolicies.All.Contains(o.Overlength)) throw new ArgumentException($"--overlength \"{o.Overlength}\" must be one of: {string.Join(", ", OverlengthPolicies.All)}");
        if (!ErrorPolicies.All.Contains(o.OnError)) throw new ArgumentException($"--on-error \"{o.OnError}\" must be one of: {string.Join(", ", ErrorPolicies.All)}");
        if (o.Validation.Count == 0 && !(o.ValidationFraction > 0 && o.ValidationFraction < 1))
            throw new ArgumentException($"--validation-fraction {o.ValidationFraction} must be in (0, 1) when no --validation source is given");
        if (task.HasLabels)
        {
            if (o.MaxLength < 1) throw new ArgumentException($"--max-length {o.MaxLength} must be at least 1");
            foreach (var s in o.Train.Concat(o.Validation))
                if (!task.Reads(s.Format)) throw new ArgumentException($"{s.Path}: plain text has no labels; use jsonl or csv for classification");
        }
        if (o.Threads is < 1 or > PrepareOptions.MaxThreads) throw new ArgumentException($"--threads {o.Threads} must be from 1 to {PrepareOptions.MaxThreads}");
        if (o.ShardTokens < 1) throw new ArgumentException($"--shard-tokens {o.ShardTokens} must be at least 1");
        if (o.BlockBytes is < 1 or > DatasetLayout.MaxBlockBytes) throw new ArgumentException($"block_bytes {o.BlockBytes} must be in 1..{DatasetLayout.MaxBlockBytes}");
        return task;
    }

    sealed record Result(ITokenizer Tokenizer, LabelSet Labels, IReadOnlyList<DatasetSource> Sources, DatasetSplit Train, DatasetSplit Validation, DataReport Report);

    /// <summary>Per-thread scratch space and counts.</summary>
    sealed class Worker(bool word)
    {
        public int[] Ids = [];
        public char[] Lowered = [];
        /// <summary>A range's text, a piece at a time (<see cref="RangeText"/>).</summary>
        public char[] Text = [];

        /// <summary>
        /// Room for the pieces of a range of <paramref name="bytes"/>: <paramref name="pieceChars"/> for the char tokenizer
        /// (small enough to stay in the core's cache; any cut between two pieces gives the same ids), the whole range for
        /// the word tokenizer (a piece may only end after a separator).
        /// </summary>
        public Span<char> TextBuffer(bool word, int bytes, int pieceChars)
        {
            var chars = word ? bytes + 4 : pieceChars;
            if (word ? Text.Length < chars : Text.Length != chars) Text = new char[word ? Math.Max(chars, TextRanges.DefaultRangeBytes + 4) : chars];
            return Text;
        }
        public readonly long[] Dense = word ? [] : new long[CharTokenizer.CountDenseLimit];
        public readonly Dictionary<int, long> Sparse = [];
        public WordTable Words = new();

        public Span<int> IdsFor(int length)
        {
            if (Ids.Length < length) Ids = new int[Math.Max(length, 1 << 16)];
            return Ids;
        }

        /// <summary>The text as the tokenizer sees it: lowercased (word tokenizer with lowercase) into scratch space, else as is.</summary>
        public ReadOnlySpan<char> Prepared(ReadOnlySpan<char> text, bool lower)
        {
            if (!lower) return text;
            if (Lowered.Length < text.Length) Lowered = new char[Math.Max(text.Length, 1 << 16)];
            text.ToLowerInvariant(Lowered);
            return Lowered.AsSpan(0, text.Length);
        }
    }

    /// <summary>Counting and encoding as the tokenizer of <paramref name="spec"/> does.</summary>
    sealed class Tokenizing(TokenizerSpec spec, int threads)
    {
        readonly bool word = spec.Kind == TokenizerKinds.Word;
        public readonly Worker[] Workers = Enumerable.Range(0, threads).Select(_ => new Worker(spec.Kind == TokenizerKinds.Word)).ToArray();
        ITokenizer? tokenizer;

        /// <summary>Encodes with <paramref name="fitted"/> (fitted elsewhere: on-cluster preparation) instead of <see cref="Fit"/>.</summary>
        public void Use(ITokenizer fitted) => tokenizer = fitted;

        public void Count(int w, ReadOnlySpan<char> text)
        {
            var s = Workers[w];
            if (word) WordTokenizer.Count(s.Prepared(text, spec.Lowercase), s.Words);
            else CharTokenizer.Count(text, spec.Lowercase, s.Dense, s.Sparse);
        }

        /// <summary>The tokenizer fitted on everything counted (the counts of all threads summed).</summary>
        public ITokenizer Fit()
        {
            if (word)
            {
                var all = Workers[0].Words;
                foreach (var s in Workers.Skip(1)) all.AddAll(s.Words);
                tokenizer = WordTokenizer.FromCounts(all, spec.MinFrequency, spec.MaxVocab, spec.Lowercase);
            }
            else
            {
                var dense = Workers[0].Dense;
                var sparse = Workers[0].Sparse;
                foreach (var s in Workers.Skip(1))
                {
                    for (var i = 0; i < dense.Length; i++) dense[i] += s.Dense[i];
                    foreach (var (k, v) in s.Sparse) sparse[k] = sparse.GetValueOrDefault(k) + v;
                }
                tokenizer = CharTokenizer.FromCounts(dense, sparse, spec.MinFrequency, spec.MaxVocab, spec.Lowercase);
            }
            foreach (var s in Workers) s.Words = new();
            return tokenizer;
        }

        /// <summary>The ids of <paramref name="text"/>, in the worker's scratch space (valid until its next call).</summary>
        public ReadOnlySpan<int> Encode(int w, ReadOnlySpan<char> text)
        {
            var ids = Workers[w].IdsFor(text.Length);
            return ids[..Encode(w, text, ids)];
        }

        /// <summary>Characters the char tokenizer encodes at a time into scratch ids before narrowing them: small enough to stay in the core's cache.</summary>
        const int NarrowBlock = 1 << 14;

        /// <summary>
        /// The ids of <paramref name="text"/> as a shard holds them (<see cref="DatasetSplitWriter.Narrow"/>) into
        /// <paramref name="bytes"/> (at least <c>text.Length × width</c> long); returns the number of ids. The char
        /// tokenizer encodes a cache-sized block at a time (cut between characters, never inside a surrogate pair, which
        /// gives the same ids as the whole text), so the ids never take a chunk-sized int array through memory.
        /// </summary>
        public int EncodeNarrowed(int w, ReadOnlySpan<char> text, Span<byte> bytes, int width)
        {
            if (word)
            {
                var ids = Encode(w, text);
                DatasetSplitWriter.Narrow(ids, bytes, width);
                return ids.Length;
            }
            var scratch = Workers[w].IdsFor(Math.Min(text.Length, NarrowBlock));
            var n = 0;
            while (!text.IsEmpty)
            {
                var take = Math.Min(text.Length, NarrowBlock);
                if (take < text.Length && char.IsHighSurrogate(text[take - 1]) && char.IsLowSurrogate(text[take])) take--;
                var count = Encode(w, text[..take], scratch);
                DatasetSplitWriter.Narrow(scratch[..count], bytes[(n * width)..], width);
                n += count;
                text = text[take..];
            }
            return n;
        }

        /// <summary>Encodes <paramref name="text"/> into <paramref name="ids"/> (at least as long as the text); returns the number of ids.</summary>
        public int Encode(int w, ReadOnlySpan<char> text, Span<int> ids)
        {
            var s = Workers[w];
            return tokenizer is WordTokenizer wt ? wt.EncodeLowered(s.Prepared(text, spec.Lowercase), ids) : ((CharTokenizer)tokenizer!).Encode(text, ids);
        }
    }

    static string VocabularyProblem(PrepareOptions o) =>
        $"--min-frequency {o.Tokenizer.MinFrequency} leaves no {o.Tokenizer.Kind} token of the training data in the vocabulary (none occurs that often): lower it";

    /// <param name="hashAside">Hash the stored sources on a thread of their own, beside their decoding (more than one thread).</param>
    static IEnumerable<TextPiece> Pieces(IEnumerable<SourceFile> sources, ReadOptions read, DataReportBuilder report, List<DatasetSource>? stored, CancellationToken cancel, bool hashAside = false)
    {
        foreach (var source in sources)
        {
            var info = stored is null ? null : new SourceReader.Stored();
            foreach (var piece in SourceReader.Read(source, read, report, info, cancel, hashAside)) yield return piece;
            if (info is not null) stored!.Add(new DatasetSource(source.Path, source.Split, source.Format, source.Compression, info.Bytes, info.Sha256!));
        }
    }

    // ---- language model ----

    static Result LanguageModel(PrepareOptions o, ReadOptions read, DatasetWriter writer, Action<string> log, CancellationToken cancel)
    {
        var word = o.Tokenizer.Kind == TokenizerKinds.Word;
        if (LanguageModelInRanges(o, writer, log, cancel) is { } inRanges) return inRanges;
        var passes = o.Validation.Count == 0 ? 3 : 2;
        long cut = -1;
        if (o.Validation.Count == 0)
        {
            log($"pass 1/3: the length of the text ({o.Train.Count} source(s)), to hold out the last {o.ValidationFraction:P1} for validation");
            var (total, _) = TextLength(o.Train, read, cancel);
            cut = Cut(o, total);
        }

        log($"pass {passes - 1}/{passes}: counting {o.Tokenizer.Kind} tokens of the training split on {o.Threads} thread(s)");
        var tokenizing = new Tokenizing(o.Tokenizer, o.Threads);
        CountText(tokenizing, new TextChunker(word, o.ChunkChars).Chunks(Pieces(o.Train, read, new DataReportBuilder(), null, cancel), cut, allValidation: false), cancel);
        var (tokenizer, width) = FitToEncode(tokenizing, o, log, $"{passes}/{passes}");
        var report = new DataReportBuilder();
        var sources = new List<DatasetSource>();
        // More than one thread: the sources are hashed beside their decoding.
        var splits = TextSplits(writer, o, width);
        using var train = splits.Train;
        using var validation = splits.Validation;
        var chunks = new TextChunker(word, o.ChunkChars).Chunks(Pieces(o.Train, read, report, sources, cancel, hashAside: o.Threads > 1), cut, allValidation: false);
        if (o.Validation.Count > 0)
            chunks = chunks.Concat(new TextChunker(word, o.ChunkChars).Chunks(Pieces(o.Validation, read, report, sources, cancel, hashAside: o.Threads > 1), -1, allValidation: true));
        EncodeText(tokenizing, chunks, train, validation, cancel);
        if (validation.Tokens < 2)
            throw new DataFormatException((o.Validation.Count > 0 ? o.Validation : o.Train)[^1].Path, 0,
                $"the validation split has {validation.Tokens} token(s); raise --validation-fraction or give a longer validation source");
        return new Result(tokenizer, LabelSet.Empty, sources, train.Finish(), validation.Finish(), report.ToReport());
    }

    /// <summary>Where a language model's validation split begins in its <paramref name="total"/> characters of training text (the in-memory path's cut).</summary>
    static long Cut(PrepareOptions o, long total)
    {
        var validationLength = Math.Clamp((long)Math.Ceiling(o.ValidationFraction * total - 1e-9), 1, Math.Max(1, total - 1));
        var cut = total - validationLength;
        if (cut <= 0) throw new DataFormatException(o.Train[0].Path, 0, $"the text is {total} character(s) long, too short to split into training and validation");
        return cut;
    }

    /// <summary>The tokenizer fitted on the counts (refused when it holds no token of the data), logged as pass <paramref name="pass"/> begins, and the shards' id width.</summary>
    static (ITokenizer Tokenizer, int Width) FitToEncode(Tokenizing tokenizing, PrepareOptions o, Action<string> log, string pass)
    {
        var tokenizer = tokenizing.Fit();
        if (tokenizer.VocabSize < 3) throw new ArgumentException(VocabularyProblem(o));
        log($"pass {pass}: encoding on {o.Threads} thread(s) (vocabulary {tokenizer.VocabSize:N0})");
        return (tokenizer, DatasetLayout.WidthFor(tokenizer.VocabSize));
    }

    /// <summary>A language model's two splits; with more than one thread their token files are hashed on a thread of their own.</summary>
    static (DatasetSplitWriter Train, DatasetSplitWriter Validation) TextSplits(DatasetWriter writer, PrepareOptions o, int width)
    {
        var train = writer.Split(DatasetLayout.TrainSplit, width, records: false, o.ShardTokens, o.BlockBytes, hashBehind: o.Threads > 1);
        try
        {
            return (train, writer.Split(DatasetLayout.ValidationSplit, width, records: false, o.ShardTokens, o.BlockBytes, hashBehind: o.Threads > 1));
        }
        catch
        {
            train.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Pass 1 of a language model holding out a fraction (a whole prepare's, or a cluster part's): the length of the
    /// sources' text with their records joined by "\n", and whether they hold a record. Plain text is measured from its
    /// bytes; what that cannot tell, and records, are read.
    /// </summary>
    static (long Length, bool Pieces) TextLength(IEnumerable<SourceFile> sources, ReadOptions read, CancellationToken cancel)
    {
        long total = 0;
        bool joiner = false, any = false;
        foreach (var source in sources)
        {
            if (source.Format == DataFormats.Text && SourceReader.TextLength(source, cancel) is { } length)
            {
                total += (joiner ? 1 : 0) + length;
                joiner = any = true; // a text file with a length is one record (one that is only whitespace has none)
                continue;
            }
            foreach (var piece in Pieces([source], read, new DataReportBuilder(), null, cancel))
            {
                if (joiner) total++;
                total += piece.Text.Length;
                joiner = piece.EndOfRecord;
                any = true;
            }
        }
        return (total, any);
    }

    /// <summary>Pass 2 of a language model (a whole prepare's, or a cluster part's): counts the tokens of the chunks before the first of the validation split, on every thread of <paramref name="tokenizing"/>.</summary>
    static void CountText(Tokenizing tokenizing, IEnumerable<TextChunk> chunks, CancellationToken cancel) =>
        OrderedParallel.Run(chunks.TakeWhile(c => !c.Validation || Return(c)), tokenizing.Workers.Length, (w, c) =>
        {
            tokenizing.Count(w, c.Text);
            c.Return();
            return 0;
        }, _ => { }, cancel, readAhead: true);

    /// <summary>
    /// Pass 3 of a language model (a whole prepare's, or a cluster part's): encodes the chunks on every thread of
    /// <paramref name="tokenizing"/> and appends their ids, in order, to <paramref name="train"/> or <paramref name="validation"/>.
    /// </summary>
    static void EncodeText(Tokenizing tokenizing, IEnumerable<TextChunk> chunks, DatasetSplitWriter train, DatasetSplitWriter validation, CancellationToken cancel)
    {
        var width = train.Width;
        if (validation.Width != width) throw new ArgumentException($"the splits' widths differ: {width} and {validation.Width}", nameof(validation));
        OrderedParallel.Run(chunks, tokenizing.Workers.Length, (w, c) =>
        {
            // Encoded and narrowed to the shards' width here, on the tokenizing thread; the writing thread only hashes and writes.
            var bytes = ArrayPool<byte>.Shared.Rent(Math.Max(1, c.Length * width));
            var count = tokenizing.EncodeNarrowed(w, c.Text, bytes, width);
            c.Return();
            return (Bytes: bytes, Length: count * width, c.Validation);
        }, r =>
        {
            var bytes = new PooledBytes(r.Bytes); // the hashing thread may hold it until it has hashed it
            try
            {
                (r.Validation ? validation : train).AppendNarrowed(bytes, r.Length);
            }
            finally
            {
                bytes.Release();
            }
        }, cancel, readAhead: true);
    }

    static bool Return(TextChunk c)
    {
        c.Return();
        return false;
    }

    // ---- classification ----

    /// <summary>A batch of records for one unit of parallel work.</summary>
    sealed class RecordBatch
    {
        public readonly List<(string Text, string Label, bool Validation, string File, long Line)> Records = [];
        public long Chars;
    }

    const int BatchChars = 1 << 20, BatchRecords = 8192;

    /// <summary>
    /// Encodes classification records on every thread of <paramref name="tokenizing"/> and appends them, in order, with their label
    /// ids to <paramref name="train"/> or <paramref name="validation"/>; a label the training split never had fails naming
    /// the record (<paramref name="trainFiles"/>: what the message says the training data is, e.g. " (a.csv, b.csv)").
    /// </summary>
    static void EncodeRecords(IEnumerable<RecordBatch> batches, Tokenizing tokenizing, LabelSet labelSet, DatasetSplitWriter train, DatasetSplitWriter validation,
        string trainFiles, CancellationToken cancel) =>
        OrderedParallel.Run(batches, tokenizing.Workers.Length, (w, b) =>
        {
            var lengths = new int[b.Records.Count];
            var all = new List<int>(checked((int)Math.Min(int.MaxValue, b.Chars)));
            for (var i = 0; i < b.Records.Count; i++)
            {
                var ids = tokenizing.Encode(w, b.Records[i].Text);
                if (ids.IsEmpty) ids = [Vocabulary.UnkId]; // as PreparedData.EncodeNonEmpty
                lengths[i] = ids.Length;
                foreach (var id in ids) all.Add(id);
            }
            return (Batch: b, Lengths: lengths, Ids: all);
        }, r =>
        {
            var ids = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(r.Ids);
            var at = 0;
            for (var i = 0; i < r.Lengths.Length; i++)
            {
                var rec = r.Batch.Records[i];
                if (!labelSet.TryGetId(rec.Label, out var label))
                    throw new DataFormatException(rec.File, RecordPolicy.Line(rec.Line), $"label \"{rec.Label}\" never occurs in the training data{trainFiles}, so the model cannot predict it; training labels: {labelSet.Describe()}");
                (rec.Validation ? validation : train).AppendRecord(ids.Slice(at, r.Lengths[i]), label);
                at += r.Lengths[i];
            }
        }, cancel, readAhead: true);

    /// <summary>Pass 2 of classification (a whole prepare's, or a cluster part's): counts the tokens of the batches' training records on every thread of <paramref name="tokenizing"/>.</summary>
    static void CountRecords(Tokenizing tokenizing, IEnumerable<RecordBatch> batches, CancellationToken cancel) =>
        OrderedParallel.Run(batches, tokenizing.Workers.Length, (w, b) =>
        {
            foreach (var r in b.Records)
                if (!r.Validation) tokenizing.Count(w, r.Text);
            return 0;
        }, _ => { }, cancel, readAhead: true);

    /// <summary>Records in batches; <paramref name="inValidation"/> (by record number across the sources) marks held-out records, <paramref name="allValidation"/> all.</summary>
    static IEnumerable<RecordBatch> Batches(IEnumerable<TextPiece> pieces, bool[]? inValidation, bool allValidation, Action<string>? onTrainLabel)
    {
        var batch = new RecordBatch();
        long k = 0;
        foreach (var p in pieces)
        {
            var validation = allValidation || (inValidation is not null && inValidation[k]);
            k++;
            if (!validation) onTrainLabel?.Invoke(p.Label!);
            batch.Records.Add((p.Text.ToString(), p.Label!, validation, p.File, p.Line));
            batch.Chars += p.Text.Length;
            if (batch.Chars >= BatchChars || batch.Records.Count >= BatchRecords)
            {
                yield return batch;
                batch = new RecordBatch();
            }
        }
        if (batch.Records.Count > 0) yield return batch;
    }

    static Result Classification(PrepareOptions o, ReadOptions read, DatasetWriter writer, Action<string> log, CancellationToken cancel)
    {
        var passes = o.Validation.Count == 0 ? 3 : 2;
        bool[]? inValidation = null;
        if (o.Validation.Count == 0)
        {
            log($"pass 1/3: the records' labels ({o.Train.Count} source(s)), to hold out {o.ValidationFraction:P1} for validation (seed {o.Seed})");
            var labelIds = new Dictionary<string, int>(StringComparer.Ordinal);
            var labels = new List<int>();
            foreach (var p in Pieces(o.Train, read, new DataReportBuilder(), null, cancel))
            {
                if (!labelIds.TryGetValue(p.Label!, out var id)) labelIds[p.Label!] = id = labelIds.Count;
                labels.Add(id);
            }
            inValidation = Split(labels, o.Train[0].Path, o.ValidationFraction, o.Seed);
        }

        log($"pass {passes - 1}/{passes}: counting {o.Tokenizer.Kind} tokens of the training split on {o.Threads} thread(s)");
        var tokenizing = new Tokenizing(o.Tokenizer, o.Threads);
        var trainLabels = new SortedSet<string>(StringComparer.Ordinal);
        CountRecords(tokenizing, Batches(Pieces(o.Train, read, new DataReportBuilder(), null, cancel), inValidation, false, l => trainLabels.Add(l)), cancel);
        var tokenizer = tokenizing.Fit();
        if (tokenizer.VocabSize < 3) throw new ArgumentException(VocabularyProblem(o));
        var labelSet = new LabelSet(trainLabels);
        if (labelSet.Count < 2)
            throw new DataFormatException(o.Train[0].Path, 0, $"classification needs at least 2 distinct labels in the training split, found {labelSet.Count}");

        log($"pass {passes}/{passes}: encoding on {o.Threads} thread(s) (vocabulary {tokenizer.VocabSize:N0}, {labelSet.Count} labels)");
        var width = DatasetLayout.WidthFor(tokenizer.VocabSize);
        var report = new DataReportBuilder();
        var sources = new List<DatasetSource>();
        using var train = writer.Split(DatasetLayout.TrainSplit, width, records: true, o.ShardTokens, o.BlockBytes);
        using var validation = writer.Split(DatasetLayout.ValidationSplit, width, records: true, o.ShardTokens, o.BlockBytes);
        var batches = Batches(Pieces(o.Train, read, report, sources, cancel), inValidation, false, null);
        if (o.Validation.Count > 0) batches = batches.Concat(Batches(Pieces(o.Validation, read, report, sources, cancel), null, true, null));
        var trainFiles = string.Join(", ", o.Train.Select(s => s.Path).Take(3)) + (o.Train.Count > 3 ? ", ..." : "");
        EncodeRecords(batches, tokenizing, labelSet, train, validation, $" ({trainFiles})", cancel);
        return new Result(tokenizer, labelSet, sources, train.Finish(), validation.Finish(), report.ToReport());
    }

    /// <summary><see cref="DatasetLoader.SplitRecords"/> on label ids: the same seeded shuffle and the same moves back to training.</summary>
    static bool[] Split(List<int> labels, string file, double fraction, int seed)
    {
        var n = labels.Count;
        if (n < 2)
            throw new DataFormatException(file, 0, $"{n} record(s) cannot be split into training and validation; give more data or a separate --validation source");
        var validationCount = Math.Clamp((int)Math.Ceiling(fraction * n - 1e-9), 1, n - 1);
        var order = Enumerable.Range(0, n).ToArray();
        new SplitMix64(0x73_706C_6974UL ^ (ulong)(long)seed).Shuffle(order); // "split", as DatasetLoader
        var inValidation = new bool[n];
        foreach (var i in order.AsSpan(n - validationCount)) inValidation[i] = true;
        var trainLabels = new HashSet<int>();
        for (var i = 0; i < n; i++) if (!inValidation[i]) trainLabels.Add(labels[i]);
        for (var i = 0; i < n; i++)
        {
            if (inValidation[i] && trainLabels.Add(labels[i])) inValidation[i] = false;
        }
        return inValidation;
    }
}
