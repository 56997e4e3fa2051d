using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Training;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>Preparing datasets in tests and comparing them with what the in-memory path makes of the same data.</summary>
static class PrepareTestSupport
{
    /// <summary>Options for <paramref name="sources"/> with small chunks, ranges and shards, so that tests cross their boundaries.</summary>
    public static PrepareOptions Options(string output, IEnumerable<string> sources, string? format = null, IEnumerable<string>? validation = null) => new()
    {
        Train = SourceFiles.Expand(sources, DatasetLayout.TrainSplit, format),
        Validation = validation is null ? [] : SourceFiles.Expand(validation, DatasetLayout.ValidationSplit, format),
        Output = output,
        ShardTokens = 97,
        ChunkChars = 64,
        RangeBytes = 61,
    };

    /// <summary>Every file of the two datasets, byte for byte (manifest included); <paramref name="what"/> names the comparison in a failure.</summary>
    public static void AssertSameDataset(string expected, string actual, string what)
    {
        var files = Directory.GetFiles(expected).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(files, Directory.GetFiles(actual).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        foreach (var f in files)
            Assert.True(File.ReadAllBytes(Path.Combine(expected, f!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(actual, f!))), $"{what}: {f} differs");
    }

    /// <summary>The SHA-256 of each block of <paramref name="blockBytes"/> of <paramref name="bytes"/> (the last one short), as a manifest's block_sha256.</summary>
    public static System.Text.Json.Nodes.JsonArray BlockHashes(byte[] bytes, int blockBytes) =>
        [.. bytes.Chunk(blockBytes).Select(b => (System.Text.Json.Nodes.JsonNode)Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(b)))];

    /// <summary>
    /// Rewrites the manifest of <paramref name="dataset"/> as format version 1 wrote it: version 1, no block_bytes or
    /// block_sha256 (a dataset prepared before version 2).
    /// </summary>
    public static void AsVersion1(string dataset)
    {
        var path = Path.Combine(dataset, DatasetLayout.ManifestFile);
        var manifest = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        manifest["version"] = 1;
        foreach (var split in new[] { "train", "validation" })
            foreach (var shard in manifest[split]!["shards"]!.AsArray())
                foreach (var kind in new[] { "tokens", "offsets", "labels" })
                    if (shard![kind] is System.Text.Json.Nodes.JsonObject entry)
                    {
                        entry.Remove("block_bytes");
                        entry.Remove("block_sha256");
                    }
        File.WriteAllText(path, manifest.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>The job spec of the in-memory path with the same options.</summary>
    public static JobSpec Spec(PrepareOptions o, string format, string train, string? validation = null) => new()
    {
        Task = o.Task,
        Data = new DataSpec
        {
            Format = format,
            Train = train,
            Validation = validation,
            ValidationFraction = o.ValidationFraction,
            TextField = o.TextField,
            LabelField = o.LabelField,
            MaxLength = o.MaxLength,
            Overlength = o.Overlength,
            OnError = o.OnError,
        },
        Tokenizer = o.Tokenizer,
        Training = new TrainingSpec { Seed = o.Seed },
    };

    /// <summary>
    /// The dataset's ids are of the narrowest width that holds its vocabulary (a char vocabulary of at most 256 tokens:
    /// uint8), and every shard's file on disk is its token count times that width.
    /// </summary>
    public static void AssertNarrowest(PreparedDataset actual)
    {
        var vocab = actual.Manifest.VocabSize;
        var (dtype, width) = vocab <= 256 ? (DatasetLayout.Uint8, 1) : vocab <= 65536 ? (DatasetLayout.Uint16, 2) : (DatasetLayout.Uint32, 4);
        Assert.Equal(dtype, actual.Manifest.TokenDtype);
        if (actual.Tokenizer.Kind == TokenizerKinds.Char && vocab <= 256) Assert.Equal(DatasetLayout.Uint8, actual.Manifest.TokenDtype);
        foreach (var s in actual.Manifest.Train.Shards.Concat(actual.Manifest.Validation.Shards))
            Assert.Equal(s.TokenCount * width, new FileInfo(Path.Combine(actual.Directory, s.Tokens.Name)).Length);
    }

    /// <summary>Asserts that the dataset holds exactly the tokenizer, labels and ids of <paramref name="expected"/>.</summary>
    public static void AssertSame(PreparedData expected, PreparedDataset actual)
    {
        Assert.Equal(expected.Tokenizer.ToState().Tokens, actual.Tokenizer.ToState().Tokens);
        Assert.Equal(expected.Tokenizer.Kind, actual.Tokenizer.Kind);
        Assert.Equal(expected.Labels.Names, actual.Labels.Names);
        AssertNarrowest(actual);
        if (actual.Manifest.Settings.Task == TaskKinds.LanguageModel)
        {
            Assert.Equal(expected.TrainTokens, actual.Train.ReadAllTokens());
            Assert.Equal(expected.ValidationTokens, actual.Validation.ReadAllTokens());
        }
        else
        {
            var train = actual.Train.ReadAllRecords().ToList();
            Assert.Equal(expected.TrainSequences.Count, train.Count);
            for (var i = 0; i < train.Count; i++)
            {
                Assert.Equal(expected.TrainSequences[i], train[i].Ids);
                Assert.Equal(expected.TrainLabels[i], train[i].Label);
            }
            var validation = actual.Validation.ReadAllRecords().ToList();
            Assert.Equal(expected.ValidationSequences.Count, validation.Count);
            for (var i = 0; i < validation.Count; i++)
            {
                Assert.Equal(expected.ValidationSequences[i], validation[i].Ids);
                Assert.Equal(expected.ValidationLabels[i], validation[i].Label);
            }
        }
    }
}
