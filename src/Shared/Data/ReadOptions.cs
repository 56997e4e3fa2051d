using Dtrain.Specs;

namespace Dtrain.Data;

/// <summary>How to read one data file: its format, which fields to take and what to do with bad or over-long records.</summary>
public sealed record ReadOptions
{
    /// <summary>"text", "jsonl" or "csv".</summary>
    public string Format { get; init; } = DataFormats.Text;
    public string TextField { get; init; } = "text";
    /// <summary>Field holding the label; null reads no labels (language modelling).</summary>
    public string? LabelField { get; init; }
    /// <summary>Longest record in UTF-16 characters; 0 = no limit.</summary>
    public int MaxLength { get; init; }
    /// <summary>"truncate", "skip" or "error" for records longer than <see cref="MaxLength"/>.</summary>
    public string Overlength { get; init; } = OverlengthPolicies.Truncate;
    /// <summary>"fail" or "skip" for malformed records.</summary>
    public string OnError { get; init; } = ErrorPolicies.Fail;

    /// <summary>Options for a job's data files; <paramref name="labels"/> reads labels, <paramref name="limitLength"/> applies max_length.</summary>
    public static ReadOptions From(DataSpec data, bool labels, bool limitLength) => new()
    {
        Format = data.Format,
        TextField = data.TextField,
        LabelField = labels ? data.LabelField : null,
        MaxLength = limitLength ? data.MaxLength : 0,
        Overlength = data.Overlength,
        OnError = data.OnError,
    };
}
