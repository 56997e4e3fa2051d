namespace Dtrain.Data.Storage;

/// <summary>The names of files in a dataset store: relative, '/'-separated, never leaving the root.</summary>
public static class StoreNames
{
    /// <summary><paramref name="name"/> when it is a valid file name under a root; otherwise an <see cref="ArgumentException"/> naming it and why.</summary>
    public static string Check(string root, string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        string? problem = name.Length == 0 ? "an empty file name"
            : name.StartsWith('/') ? "an absolute name (names are relative to the dataset's root)"
            : name.Contains('\\') ? "a backslash (names use '/')"
            : name.Contains('\0') ? "a NUL character"
            : name.EndsWith('/') ? "a directory, not a file"
            : name.Split('/').Any(p => p is "" or "." or "..") ? "an empty, '.' or '..' path segment (names never leave the dataset's root)"
            : null;
        return problem is null ? name : throw new ArgumentException($"{root}: file name \"{name}\" is {problem}", nameof(name));
    }

    /// <summary>Whether <paramref name="hex"/> is a SHA-256 written as 64 hex digits.</summary>
    public static bool IsSha256(string hex) => hex.Length == 64 && hex.All(char.IsAsciiHexDigit);
}
