namespace Dtrain.Data;

/// <summary>
/// Class labels and their ids. Built from the training split in ordinal order (so ids never depend on file order),
/// saved as the plain list <see cref="Names"/> and rebuilt from it with the constructor, which keeps the given order.
/// </summary>
public sealed class LabelSet
{
    readonly string[] names;
    readonly Dictionary<string, int> ids;

    /// <summary>No labels: language modelling.</summary>
    public static readonly LabelSet Empty = new([]);

    /// <summary>Labels in id order, e.g. as saved in a checkpoint; throws <see cref="InvalidDataException"/> for empty or duplicate names.</summary>
    public LabelSet(IEnumerable<string> names)
    {
        ArgumentNullException.ThrowIfNull(names);
        this.names = [.. names];
        ids = new Dictionary<string, int>(this.names.Length, StringComparer.Ordinal);
        for (var i = 0; i < this.names.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(this.names[i])) throw new InvalidDataException($"label {i} is empty");
            if (!ids.TryAdd(this.names[i], i)) throw new InvalidDataException($"label \"{this.names[i]}\" appears twice");
        }
    }

    /// <summary>The distinct labels of the training split, sorted ordinally; throws <see cref="ArgumentException"/> for an empty label.</summary>
    public static LabelSet FromTraining(IEnumerable<string> trainingLabels)
    {
        ArgumentNullException.ThrowIfNull(trainingLabels);
        var distinct = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var label in trainingLabels)
        {
            if (string.IsNullOrWhiteSpace(label)) throw new ArgumentException("training labels must not be empty", nameof(trainingLabels));
            distinct.Add(label);
        }
        return new LabelSet(distinct);
    }

    /// <summary>Labels in id order; serialize this list to save the set.</summary>
    public IReadOnlyList<string> Names => this.names;
    public int Count => this.names.Length;

    public bool Contains(string label) => ids.ContainsKey(label);
    public bool TryGetId(string label, out int id) => ids.TryGetValue(label, out id);

    /// <summary>The id of <paramref name="label"/>; throws <see cref="KeyNotFoundException"/> naming the known labels if there is none.</summary>
    public int IdOf(string label) =>
        ids.TryGetValue(label, out var id) ? id : throw new KeyNotFoundException($"unknown label \"{label}\"; known labels: {Describe()}");

    /// <summary>The id of <paramref name="label"/> read from <paramref name="file"/>:<paramref name="line"/>; an unknown label is a <see cref="DataFormatException"/> there.</summary>
    public int IdOf(string label, string file, int line) =>
        ids.TryGetValue(label, out var id) ? id : throw new DataFormatException(file, line, $"unknown label \"{label}\"; known labels: {Describe()}");

    public string NameOf(int id) =>
        (uint)id < (uint)this.names.Length ? this.names[id] : throw new ArgumentOutOfRangeException(nameof(id), id, $"label id outside [0, {this.names.Length})");

    /// <summary>The labels for messages, shortened when there are many.</summary>
    public string Describe(int max = 20) =>
        this.names.Length == 0 ? "(none)"
        : string.Join(", ", this.names.Take(max).Select(n => $"\"{n}\"")) + (this.names.Length > max ? $", ... ({this.names.Length} in all)" : "");
}
