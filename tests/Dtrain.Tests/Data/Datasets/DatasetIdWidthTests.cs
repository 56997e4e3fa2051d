using Dtrain.Data.Datasets;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>Ids narrowed to a shard's width (1, 2 or 4 bytes, little-endian) and widened back are the ids, at any length (vector bodies and scalar tails).</summary>
public sealed class DatasetIdWidthTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void Narrowed_and_widened_ids_are_the_ids(int width)
    {
        var random = new Random(width);
        var limit = width == 4 ? int.MaxValue : 1 << (8 * width);
        foreach (var length in new[] { 0, 1, 3, 15, 16, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000, 4099 })
        {
            var ids = Enumerable.Range(0, length).Select(i => i < 3 ? (i == 0 ? 0 : limit - 1) : random.Next(limit)).ToArray();
            var bytes = new byte[length * width];
            DatasetSplitWriter.Narrow(ids, bytes, width);
            for (var i = 0; i < length; i++)
                for (var b = 0; b < width; b++)
                    Assert.Equal((byte)(ids[i] >> (8 * b)), bytes[i * width + b]);
            var back = new int[length];
            PreparedShard.Widen(bytes, back, width);
            Assert.Equal(ids, back);
        }
    }
}
