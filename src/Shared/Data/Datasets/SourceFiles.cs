using System.Text.RegularExpressions;
using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

/// <summary>
/// Expands <c>dtrain prepare</c>'s source arguments — files, directories (every regular file below, in ordinal order of
/// its relative path, hidden ones skipped) and globs (<c>*</c>, <c>?</c>, <c>[abc]</c>, <c>**</c> for any depth; a file or
/// directory that exists under the name given is taken as named) — into files in
/// order, and opens each as a stream of its decompressed bytes (<c>.gz</c> by System.IO.Compression, <c>.zst</c> by
/// ZstdSharp) while hashing the bytes as stored.
/// </summary>
public static class SourceFiles
{
    public const string None = "none", Gzip = "gzip", Zstd = "zstd";

    /// <summary>The files named by <paramref name="arguments"/>, in order; a name that matches nothing, or a file named twice, is an error.</summary>
    /// <param name="format">The format of every file (text, jsonl, csv), or null to tell it from each file's extension (under .gz/.zst).</param>
    public static IReadOnlyList<SourceFile> Expand(IEnumerable<string> arguments, string split, string? format)
    {
        ArgumentNullException.ThrowIfNull(arguments);
        var files = new List<SourceFile>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var argument in arguments)
        {
            IEnumerable<string> paths;
            // A file or directory that exists under the name given is the one named, even with a glob character in its
            // name ("notes[2024].txt" is that file, not a pattern matching "notes2.txt").
            if (File.Exists(argument)) paths = [argument];
            else if (Directory.Exists(argument)) paths = Below(argument);
            else if (argument.IndexOfAny(['*', '?', '[']) >= 0) paths = Glob(argument);
            else throw new DataFormatException(argument, 0, "file not found");
            var any = false;
            foreach (var path in paths)
            {
                any = true;
                var full = Path.GetFullPath(path);
                if (!seen.Add(full)) throw new ArgumentException($"{path} is given twice among the sources (each file is read once)");
                if (DataFile.Problem(full, long.MaxValue, "") is { } problem) throw new DataFormatException(path, 0, problem);
                var compression = CompressionOf(path);
                var inner = compression == None ? path : path[..path.LastIndexOf('.')];
                var kind = format ?? DataFormats.OfExtension(inner)
                    ?? throw new ArgumentException($"{path}: cannot tell its format from the extension (.txt or .text, .jsonl or .json, .csv, each optionally .gz or .zst); give --format text, jsonl or csv");
                files.Add(new SourceFile(path, split, kind, compression));
            }
            if (!any) throw new DataFormatException(argument, 0, Directory.Exists(argument) ? "the directory holds no files" : "no file matches");
        }
        return files;
    }

    public static string CompressionOf(string path) => Path.GetExtension(path).ToLowerInvariant() switch
    {
        ".gz" => Gzip,
        ".zst" => Zstd,
        _ => None,
    };

    static IEnumerable<string> Below(string directory) =>
        Directory.EnumerateFiles(directory, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.Hidden, IgnoreInaccessible = false })
            .Order(StringComparer.Ordinal);

    /// <summary>The files matching <paramref name="pattern"/> in ordinal order; the part before the first wildcard component is the directory searched.</summary>
    static IEnumerable<string> Glob(string pattern)
    {
        var parts = pattern.Split('/');
        var fixedCount = 0;
        while (fixedCount < parts.Length - 1 && parts[fixedCount].IndexOfAny(['*', '?', '[']) < 0) fixedCount++;
        var root = fixedCount == 0 ? (pattern.StartsWith('/') ? "/" : ".") : string.Join('/', parts[..fixedCount]);
        if (root.Length == 0) root = "/";
        if (!Directory.Exists(root)) return [];
        var rest = string.Join('/', parts[fixedCount..]);
        var regex = new Regex("^" + ToRegex(rest) + "$", RegexOptions.CultureInvariant);
        var deep = rest.Contains("**", StringComparison.Ordinal) || rest.Contains('/');
        var files = Directory.EnumerateFiles(root, "*", new EnumerationOptions { RecurseSubdirectories = deep, AttributesToSkip = FileAttributes.Hidden });
        return files
            .Select(f => (Full: f, Relative: Path.GetRelativePath(root, f)))
            .Where(f => regex.IsMatch(f.Relative))
            .OrderBy(f => f.Relative, StringComparer.Ordinal)
            .Select(f => fixedCount == 0 && !pattern.StartsWith('/') ? f.Relative : f.Full)
            .ToList();
    }

    static string ToRegex(string glob)
    {
        var sb = new System.Text.StringBuilder();
        for (var i = 0; i < glob.Length; i++)
        {
            var c = glob[i];
            if (c == '*' && i + 1 < glob.Length && glob[i + 1] == '*')
            {
                i++;
                if (i + 1 < glob.Length && glob[i + 1] == '/') { i++; sb.Append("(?:.*/)?"); }
                else sb.Append(".*");
            }
            else if (c == '*') sb.Append("[^/]*");
            else if (c == '?') sb.Append("[^/]");
            else if (c == '[')
            {
                var end = glob.IndexOf(']', i + 1);
                if (end < 0) sb.Append(@"\[");
                else
                {
                    sb.Append('[').Append(glob[(i + 1)..end].Replace("\\", "\\\\", StringComparison.Ordinal)).Append(']');
                    i = end;
                }
            }
            else sb.Append(Regex.Escape(c.ToString()));
        }
        return sb.ToString();
    }

    /// <summary>Opens <paramref name="source"/> for reading its decompressed bytes; <paramref name="raw"/> counts the bytes as stored and hashes them unless <paramref name="hash"/> is false.</summary>
    public static Stream Open(SourceFile source, out HashingStream raw, bool hash = true)
    {
        ArgumentNullException.ThrowIfNull(source);
        FileStream file;
        try
        {
            file = new FileStream(source.Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DataFormatException(source.Path, 0, $"cannot open the file: {e.Message}");
        }
        raw = new HashingStream(file, hash);
        return source.Compression switch
        {
            Gzip => new System.IO.Compression.GZipStream(raw, System.IO.Compression.CompressionMode.Decompress),
            Zstd => new ZstdSharp.DecompressionStream(raw),
            _ => raw,
        };
    }
}
