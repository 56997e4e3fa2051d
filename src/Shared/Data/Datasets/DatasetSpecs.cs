using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

/// <summary>
/// How a job spec that names a dataset (data.dataset) relates to the options the dataset was prepared with
/// (docs/data.md, "Training from a dataset"): the dataset decides the ids, so its tokenizer is the job's. The spec's
/// <c>task</c> must be the dataset's; the <c>tokenizer</c> section may be left out (its defaults are then the dataset's
/// options), and any field written with another value than the dataset's is refused, naming the field, rather than
/// silently not applied.
/// </summary>
public static class DatasetSpecs
{
    /// <exception cref="SpecException">The spec's task or a tokenizer option it gives differs from the dataset's.</exception>
    public static void Check(JobSpec spec, DatasetManifest manifest, string source)
    {
        var errors = Problems(spec, manifest, spec.Data.Dataset ?? "the dataset");
        if (errors.Count > 0) throw new SpecException(source, errors);
    }

    /// <summary>The spec as the job runs it: the dataset's tokenizer options (and for a classifier its max_length).</summary>
    public static JobSpec Resolve(JobSpec spec, DatasetManifest manifest)
    {
        var s = manifest.Settings;
        var data = spec.Data;
        if (s.MaxLength > 0) data = data with { MaxLength = s.MaxLength };
        return spec with { Tokenizer = s.Tokenizer, Data = data };
    }

    static List<SpecError> Problems(JobSpec spec, DatasetManifest manifest, string uri)
    {
        var e = new List<SpecError>();
        var s = manifest.Settings;
        if (spec.Task != s.Task)
            e.Add(new("$.task", $"\"{spec.Task}\", but dataset {uri} was prepared for task \"{s.Task}\" (dtrain prepare --task): train the task it holds, or prepare it again"));
        var given = spec.Tokenizer;
        var defaults = new TokenizerSpec();
        void Compare<T>(string field, T value, T prepared, T @default, string option)
        {
            if (!EqualityComparer<T>.Default.Equals(value, prepared) && !EqualityComparer<T>.Default.Equals(value, @default))
                e.Add(new($"$.tokenizer.{field}", $"{Show(value)}, but dataset {uri} was prepared with {Show(prepared)} (dtrain prepare {option}): a dataset job uses its dataset's tokenizer; remove the field, or prepare the dataset again"));
        }
        Compare("kind", given.Kind, s.Tokenizer.Kind, defaults.Kind, "--tokenizer");
        Compare("min_frequency", given.MinFrequency, s.Tokenizer.MinFrequency, defaults.MinFrequency, "--min-frequency");
        Compare("max_vocab", given.MaxVocab, s.Tokenizer.MaxVocab, defaults.MaxVocab, "--max-vocab");
        Compare("lowercase", given.Lowercase, s.Tokenizer.Lowercase, defaults.Lowercase, "--lowercase");
        return e;
    }

    static string Show<T>(T value) => value switch
    {
        string v => $"\"{v}\"",
        bool b => b ? "true" : "false",
        _ => $"{value}",
    };
}
