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
    /// <summary>Largest file read, in bytes (at most <see cref="DataFile.DefaultMaxBytes"/>); a larger one is refused before it is read.</summary>
    public long MaxFileBytes { get; init; } = DataFile.DefaultMaxBytes;
    /// <summary>How <see cref="MaxFileBytes"/> is named in the message that refuses a larger file (the setting that raises it).</summary>
    public string MaxFileBytesName { get; init; } = DataFile.DefaultLimitName;
    /// <summary>
    /// Whether error messages may quote the file's content (a column name, a character, a number, a label). False for
    /// a file the reader of the message did not supply (a coordinator's data-root file): messages then name the file,
    /// line and field and the kind of problem only.
    /// </summary>
    public bool QuoteContent { get; init; } = true;
    /// <summary>Told after each chunk of the file is read.</summary>
    public Action<DataReadProgress>? Progress { get; init; }
    /// <summary>Opens the file instead of open(2) (the coordinator: without following links, with its checks); see <see cref="DataFile.ReadAllBytes"/>.</summary>
    public Func<string, Microsoft.Win32.SafeHandles.SafeFileHandle>? Open { get; init; }

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
