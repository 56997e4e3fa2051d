namespace Dtrain.Specs;

/// <summary>One problem in a job spec: the JSON path of the field and what is wrong with it.</summary>
public sealed record SpecError(string Path, string Message)
{
    public override string ToString() => $"{Path}: {Message}";
}

/// <summary>A job spec that cannot be run; <see cref="Errors"/> names every offending field.</summary>
public sealed class SpecException(string source, IReadOnlyList<SpecError> errors)
    : Exception($"invalid job spec {source}:{Environment.NewLine}  " + string.Join(Environment.NewLine + "  ", errors))
{
    public string SpecSource { get; } = source;
    public IReadOnlyList<SpecError> Errors { get; } = errors;
}
