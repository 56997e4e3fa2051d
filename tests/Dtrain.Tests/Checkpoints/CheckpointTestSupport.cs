using Dtrain.Checkpoints;

namespace Dtrain.Tests.Checkpoints;

/// <summary>A fresh directory under the system temp directory, deleted on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "dtrain-ckpt-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

internal static class Samples
{
    public static readonly DateTimeOffset CreatedAt = new(2025, 3, 14, 15, 9, 26, 535, TimeSpan.FromHours(5.5));

    /// <summary>A checkpoint with a few sections of different sizes (including an empty one) and pseudo-random bytes.</summary>
    public static CheckpointData Checkpoint(long step, int modelBytes = 1500, int seed = 0)
    {
        var random = new Random(seed == 0 ? (int)step + 17 : seed);
        var model = new byte[modelBytes];
        random.NextBytes(model);
        var optimizer = new byte[modelBytes / 3 + 5];
        random.NextBytes(optimizer);
        return new CheckpointData(step, new Dictionary<string, byte[]>
        {
            ["model"] = model,
            ["optimizer"] = optimizer,
            ["tokenizer.json"] = "{\"vocab\":[\"a\",\"b\"]}"u8.ToArray(),
            ["rng-state_v1"] = [1, 2, 3, 4, 5, 6, 7, 8],
            ["empty"] = [],
        }, CreatedAt);
    }

    public static byte[] Serialize(CheckpointData data)
    {
        var stream = new MemoryStream();
        CheckpointFormat.Write(stream, data);
        return stream.ToArray();
    }

    public static void AssertSameCheckpoint(CheckpointData expected, CheckpointData actual)
    {
        Assert.Equal(expected.Step, actual.Step);
        Assert.Equal(expected.CreatedAt, actual.CreatedAt);
        Assert.Equal(expected.CreatedAt.Offset, actual.CreatedAt.Offset);
        Assert.Equal(expected.Sections.Keys.Order(StringComparer.Ordinal), actual.Sections.Keys.Order(StringComparer.Ordinal));
        foreach (var (name, bytes) in expected.Sections)
            Assert.True(bytes.AsSpan().SequenceEqual(actual.Sections[name]), $"section '{name}' differs");
    }
}
