namespace Dtrain.Specs;

/// <summary>Resolves the relative paths in a spec against the directory of the spec file, as users expect.</summary>
public static class JobSpecPaths
{
    public static string? Resolve(string baseDir, string? path) =>
        string.IsNullOrWhiteSpace(path) ? null : Path.GetFullPath(Path.IsPathRooted(path) ? path : Path.Combine(baseDir, path));

    /// <summary>The output directory: spec.output, or runs/NAME under the current directory.</summary>
    public static string OutputDir(JobSpec spec, string baseDir) =>
        Resolve(baseDir, spec.Output) ?? Path.GetFullPath(Path.Combine("runs", spec.Name));

    /// <summary>The spec with its data file paths made absolute against <paramref name="baseDir"/>.</summary>
    public static JobSpec WithAbsoluteDataPaths(JobSpec spec, string baseDir) =>
        spec with { Data = spec.Data with { Train = Resolve(baseDir, spec.Data.Train), Validation = Resolve(baseDir, spec.Data.Validation) } };
}
