namespace Dtrain.Checkpoints;

/// <summary>
/// One checkpoint as the store sees it: a training step, when it was taken, and named opaque binary
/// sections (model weights, optimizer state, tokenizer JSON, ...). The store never looks inside a section.
/// </summary>
/// <remarks>
/// Section names are 1..64 characters of <c>[a-z0-9._-]</c>. The section dictionary is copied (the byte arrays
/// are not), so later changes to the caller's dictionary do not affect this instance.
/// </remarks>
public sealed record CheckpointData
{
    /// <summary>Longest allowed section name.</summary>
    public const int MaxSectionNameLength = 64;

    /// <summary>Most sections one checkpoint may hold.</summary>
    public const int MaxSections = 4096;

    public CheckpointData(long step, IReadOnlyDictionary<string, byte[]> sections, DateTimeOffset createdAt)
    {
        Step = step;
        Sections = sections;
        CreatedAt = createdAt;
    }

    /// <summary>Training step (0 or more).</summary>
    public long Step
    {
        get;
        init => field = value >= 0
            ? value
            : throw new ArgumentOutOfRangeException(nameof(Step), value, "checkpoint step must be 0 or more");
    }

    /// <summary>Named sections, keyed by name (ordinal).</summary>
    public IReadOnlyDictionary<string, byte[]> Sections
    {
        get;
        init => field = CopyValidated(value);
    }

    /// <summary>When the checkpoint was taken (stored with its UTC offset).</summary>
    public DateTimeOffset CreatedAt { get; init; }

    /// <summary>True when <paramref name="name"/> is 1..64 characters of <c>[a-z0-9._-]</c>.</summary>
    public static bool IsValidSectionName(string? name)
    {
        if (string.IsNullOrEmpty(name) || name.Length > MaxSectionNameLength)
            return false;
        foreach (char c in name)
        {
            bool ok = c is (>= 'a' and <= 'z') or (>= '0' and <= '9') or '.' or '_' or '-';
            if (!ok)
                return false;
        }
        return true;
    }

    /// <summary>Throws <see cref="ArgumentException"/> unless <paramref name="name"/> is a valid section name.</summary>
    public static void ValidateSectionName(string? name)
    {
        if (!IsValidSectionName(name))
        {
            throw new ArgumentException(
                $"invalid checkpoint section name '{name}': must be 1..{MaxSectionNameLength} characters of [a-z0-9._-]",
                nameof(name));
        }
    }

    private static Dictionary<string, byte[]> CopyValidated(IReadOnlyDictionary<string, byte[]> sections)
    {
        ArgumentNullException.ThrowIfNull(sections, nameof(Sections));
        if (sections.Count > MaxSections)
        {
            throw new ArgumentException(
                $"a checkpoint holds at most {MaxSections} sections, got {sections.Count}", nameof(Sections));
        }
        var copy = new Dictionary<string, byte[]>(sections.Count, StringComparer.Ordinal);
        foreach (var (name, bytes) in sections)
        {
            ValidateSectionName(name);
            if (bytes is null)
                throw new ArgumentException($"checkpoint section '{name}' is null", nameof(Sections));
            if (!copy.TryAdd(name, bytes))
                throw new ArgumentException($"duplicate checkpoint section name '{name}'", nameof(Sections));
        }
        return copy;
    }
}
