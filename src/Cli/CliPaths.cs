namespace Dtrain.Cli;

/// <summary>
/// Checks, before anything is read from the network or written, that a path given for a file to write is not a
/// directory, and one given for a directory is not a file (nor under one): a bad path exits 2 naming the option and
/// the path instead of ending in an IOException half-way.
/// </summary>
public static class CliPaths
{
    /// <summary>
    /// Refuses a <paramref name="path"/> that is an existing directory, or whose parent would have to be created where
    /// a file is. An existing file is fine: it is replaced.
    /// </summary>
    /// <param name="setting">How the user gave the path, e.g. "--output".</param>
    /// <param name="example">A file name to suggest inside the directory, e.g. "model.dtck".</param>
    /// <returns>The full path.</returns>
    public static string FileToWrite(string path, string setting, string example)
    {
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full))
            throw new ArgumentException($"{setting}: {full} is an existing directory; give the file to write, e.g. {Path.Combine(full, example)}");
        ParentsAreDirectories(full, setting);
        return full;
    }

    /// <summary>Refuses a <paramref name="path"/> that is an existing file (or anything but a directory), or lies under one.</summary>
    /// <param name="setting">How the user gave the path, e.g. "--logs".</param>
    /// <param name="what">What the directory is for, e.g. "the directory for the processes' logs".</param>
    /// <returns>The full path.</returns>
    public static string DirectoryToUse(string path, string setting, string what)
    {
        var full = Path.GetFullPath(path);
        if (File.Exists(full) || (Path.Exists(full) && !Directory.Exists(full)))
            throw new ArgumentException($"{setting}: {full} is an existing file, not a directory; give {what} (an existing directory, or one to create)");
        ParentsAreDirectories(full, setting);
        return full;
    }

    static void ParentsAreDirectories(string full, string setting)
    {
        for (var dir = Path.GetDirectoryName(full); !string.IsNullOrEmpty(dir) && !Directory.Exists(dir); dir = Path.GetDirectoryName(dir))
            if (Path.Exists(dir)) throw new ArgumentException($"{setting}: cannot create {full}: {dir} is an existing file, not a directory");
    }
}
