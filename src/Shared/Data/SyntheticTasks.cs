namespace Dtrain.Data;

/// <summary>Generated tasks with a known answer, for checking that a model can learn long-range dependencies.</summary>
public static class SyntheticTasks
{
    public const string RecallFile = "synthetic:recall";
    /// <summary>The noise alphabet of <see cref="Recall"/>: lowercase 'a' to 'h'.</summary>
    public const string RecallNoise = "abcdefgh";

    /// <summary>
    /// The recall task: each sample is one uppercase class symbol ('A' + k, k &lt; <paramref name="classes"/>) followed by
    /// <paramref name="distance"/> noise characters drawn uniformly from 'a'..'h'; its label is the class symbol ("A", "B", ...).
    /// A left-to-right reader must carry the first symbol across <paramref name="distance"/> steps: LSTM and GRU cells learn
    /// this, a plain tanh RNN stays at chance for large distances. Classes are drawn uniformly. The same arguments always
    /// give the same samples (SplitMix64, not <see cref="Random"/>). Record i has File = "synthetic:recall", Line = i + 1.
    /// Note: a lowercasing tokenizer would merge the class symbols with the noise.
    /// </summary>
    public static IReadOnlyList<TextRecord> Recall(int distance, int classes, int samples, int seed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(distance);
        ArgumentOutOfRangeException.ThrowIfLessThan(classes, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(classes, 26);
        ArgumentOutOfRangeException.ThrowIfLessThan(samples, 1);
        var rng = new SplitMix64(0x7265_6361_6C6CUL ^ (ulong)(long)seed); // "recall"
        var labels = Enumerable.Range(0, classes).Select(k => ((char)('A' + k)).ToString()).ToArray();
        var records = new TextRecord[samples];
        var buffer = new char[1 + distance];
        for (var i = 0; i < samples; i++)
        {
            var k = rng.NextInt(classes);
            buffer[0] = (char)('A' + k);
            for (var j = 1; j <= distance; j++) buffer[j] = RecallNoise[rng.NextInt(RecallNoise.Length)];
            records[i] = new TextRecord(new string(buffer), labels[k], RecallFile, i + 1);
        }
        return records;
    }
}
