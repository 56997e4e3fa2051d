namespace Dtrain.Data;

/// <summary>
/// How a job's data files may be read, beyond their format: the size limit, whether error messages may quote a file's
/// content, and who is told of progress. Local training uses <see cref="Local"/>; the coordinator sets its own
/// (Coordinator:MaxDataFileBytes, and no quoting of files the submitter did not upload).
/// </summary>
public sealed record DataReadLimits
{
    /// <summary>Local training: the default size limit, messages quote the offending values (the user's own files).</summary>
    public static readonly DataReadLimits Local = new();

    /// <summary>Largest data file, in bytes (at most <see cref="DataFile.DefaultMaxBytes"/>).</summary>
    public long MaxFileBytes { get; init; } = DataFile.DefaultMaxBytes;

    /// <summary>The setting that raises <see cref="MaxFileBytes"/>, named in the message that refuses a larger file.</summary>
    public string MaxFileBytesName { get; init; } = DataFile.DefaultLimitName;

    /// <summary>Whether messages about the file at this (absolute) path may quote its content; see <see cref="ReadOptions.QuoteContent"/>.</summary>
    public Func<string, bool> QuotesContentOf { get; init; } = static _ => true;

    /// <summary>Told after each chunk of a data file is read.</summary>
    public Action<DataReadProgress>? Progress { get; init; }

    /// <summary>
    /// Opens a data file for reading (null: open(2) on its path). The coordinator's opens a data-root file without
    /// following any symbolic link and checks, on the descriptor it then reads, that the file is still allowed.
    /// </summary>
    public Func<string, Microsoft.Win32.SafeHandles.SafeFileHandle>? Open { get; init; }

    /// <summary><paramref name="options"/> for reading the file at <paramref name="path"/> under these limits.</summary>
    public ReadOptions Apply(ReadOptions options, string path)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options with { MaxFileBytes = MaxFileBytes, MaxFileBytesName = MaxFileBytesName, QuoteContent = QuotesContentOf(path), Progress = Progress, Open = Open };
    }
}
