using Dtrain.Data;

namespace Dtrain.Tests.Data;

public class SyntheticTasksTests
{
    [Fact]
    public void Recall_is_deterministic_for_a_seed_and_differs_across_seeds()
    {
        Assert.Equal(SyntheticTasks.Recall(30, 5, 200, 11), SyntheticTasks.Recall(30, 5, 200, 11));
        Assert.NotEqual(SyntheticTasks.Recall(30, 5, 200, 11).Select(r => r.Text), SyntheticTasks.Recall(30, 5, 200, 12).Select(r => r.Text));
    }

    [Fact]
    public void Recall_label_is_the_leading_class_symbol_followed_by_distance_noise_characters()
    {
        var records = SyntheticTasks.Recall(50, 4, 1000, 7);
        Assert.Equal(1000, records.Count);
        for (var i = 0; i < records.Count; i++)
        {
            var r = records[i];
            Assert.Equal(51, r.Text.Length);
            Assert.Equal(r.Text[..1], r.Label);
            Assert.InRange(r.Text[0], 'A', 'D');
            Assert.All(r.Text[1..], c => Assert.InRange(c, 'a', 'h'));
            Assert.Equal(("synthetic:recall", i + 1), (r.File, r.Line));
        }
    }

    [Fact]
    public void Recall_draws_classes_and_noise_roughly_uniformly()
    {
        var records = SyntheticTasks.Recall(40, 4, 4000, 1);
        foreach (var g in records.GroupBy(r => r.Label)) Assert.InRange(g.Count(), 850, 1150);
        Assert.Equal(4, records.Select(r => r.Label).Distinct().Count());
        var noise = records.SelectMany(r => r.Text[1..]).GroupBy(c => c).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(8, noise.Count);
        Assert.All(noise.Values, n => Assert.InRange(n, 18_000, 22_000)); // 160,000 / 8 = 20,000
    }

    [Fact]
    public void SplitMix64_matches_the_reference_sequence()
    {
        // Reference values of splitmix64.c (Vigna) for seed 0: the algorithm must never drift.
        var rng = new SplitMix64(0);
        Assert.Equal(0xE220A8397B1DCDAFUL, rng.NextUInt64());
        Assert.Equal(0x6E789E6AA1B965F4UL, rng.NextUInt64());
    }
}

public class LabelSetTests
{
    [Fact]
    public void Labels_from_training_are_distinct_and_sorted_ordinally()
    {
        var set = LabelSet.FromTraining(["spam", "ham", "Zebra", "spam", "apple"]);
        Assert.Equal(["Zebra", "apple", "ham", "spam"], set.Names);
        Assert.Equal(4, set.Count);
        Assert.Equal(2, set.IdOf("ham"));
        Assert.Equal("spam", set.NameOf(3));
    }

    [Fact]
    public void Unknown_label_is_a_clear_error()
    {
        var set = LabelSet.FromTraining(["ham", "spam"]);
        var e = Assert.Throws<KeyNotFoundException>(() => set.IdOf("eggs"));
        Assert.Contains("\"eggs\"", e.Message);
        Assert.Contains("\"ham\", \"spam\"", e.Message);
        var d = Assert.Throws<DataFormatException>(() => set.IdOf("eggs", "v.jsonl", 7));
        Assert.Equal(("v.jsonl", 7), (d.File, d.Line));
    }

    [Fact]
    public void Names_round_trip_keeps_the_ids()
    {
        var set = LabelSet.FromTraining(["b", "c", "a"]);
        var json = System.Text.Json.JsonSerializer.Serialize(set.Names);
        var restored = new LabelSet(System.Text.Json.JsonSerializer.Deserialize<string[]>(json)!);
        Assert.Equal(set.Names, restored.Names);
        Assert.All(set.Names, n => Assert.Equal(set.IdOf(n), restored.IdOf(n)));
    }

    [Fact]
    public void Duplicate_or_empty_labels_are_rejected()
    {
        Assert.Throws<InvalidDataException>(() => new LabelSet(["a", "b", "a"]));
        Assert.Throws<InvalidDataException>(() => new LabelSet(["a", ""]));
        Assert.Throws<ArgumentException>(() => LabelSet.FromTraining(["a", " "]));
        Assert.Equal(0, LabelSet.Empty.Count);
    }
}
