using System.Globalization;
using System.Text;
using System.Text.Json;
using Dtrain.Protos.Jobs;

namespace Dtrain.Server;

/// <summary>One row of a job's metrics: a step, with the validation metrics of the evaluation after it (if any).</summary>
public sealed class MetricsRow
{
    public long Step { get; init; }
    /// <summary>1-based, as `dtrain watch` shows it; 0 for a row holding only an evaluation.</summary>
    public long Epoch { get; init; }
    public double? Loss { get; init; }
    public double? Lr { get; init; }
    public double? SamplesPerSecond { get; init; }
    public double? StepMs { get; init; }
    public double? ComputeMs { get; init; }
    public double? AllreduceMs { get; init; }
    /// <summary>The rest of the step: step time minus compute and all-reduce (optimizer, RPC, data, pipeline waits).</summary>
    public double? WaitingMs { get; init; }
    public double? GradNorm { get; init; }
    public int? Workers { get; init; }
    public bool Skipped { get; init; }
    public double? ElapsedSeconds { get; init; }
    /// <summary>Pipeline jobs: the mean share of the step the stages waited for their neighbours, and each stage's compute time.</summary>
    public double? Bubble { get; init; }
    public IReadOnlyList<double> StageComputeMs { get; init; } = [];
    public Metrics? Validation { get; set; }
}

/// <summary>
/// A job's step and evaluation events as a table — what `dtrain metrics` writes (CSV or JSON lines) and the dashboard
/// draws. The columns are documented in docs/cluster.md ("Metrics history").
/// </summary>
public static class MetricsTable
{
    public static readonly IReadOnlyList<string> Columns =
    [
        "step", "epoch", "loss", "lr", "samples_per_second", "step_ms", "compute_ms", "allreduce_ms", "waiting_ms", "grad_norm", "workers", "skipped",
        "elapsed_seconds", "val_loss", "val_accuracy", "val_macro_f1", "val_perplexity", "val_bits_per_token", "bubble", "stage_compute_ms",
    ];

    /// <summary>One row per step event in order; an evaluation fills the row of its step (or a row of its own when that step is not there).</summary>
    public static List<MetricsRow> Rows(IEnumerable<JobEvent> events)
    {
        var rows = new List<MetricsRow>();
        foreach (var e in events)
        {
            if (e.KindCase == JobEvent.KindOneofCase.Step)
            {
                var s = e.Step;
                rows.Add(new MetricsRow
                {
                    Step = s.Step, Epoch = s.Epoch + 1, Loss = s.Loss, Lr = s.Lr, SamplesPerSecond = s.SamplesPerSecond, StepMs = s.StepMs,
                    ComputeMs = s.ComputeMs, AllreduceMs = s.AllreduceMs, WaitingMs = Math.Max(0, s.StepMs - s.ComputeMs - s.AllreduceMs),
                    GradNorm = s.GradNorm, Workers = s.Workers, Skipped = s.Skipped, ElapsedSeconds = s.ElapsedSeconds,
                    Bubble = s.StageComputeMs.Count > 0 ? s.Bubble : null, StageComputeMs = [.. s.StageComputeMs],
                });
            }
            else if (e.KindCase == JobEvent.KindOneofCase.Eval)
            {
                var row = rows.Count > 0 && rows[^1].Step == e.Eval.Step && rows[^1].Validation is null ? rows[^1] : null;
                if (row is null) rows.Add(row = new MetricsRow { Step = e.Eval.Step });
                row.Validation = e.Eval.Metrics;
            }
        }
        return rows;
    }

    public static void WriteCsv(IEnumerable<MetricsRow> rows, TextWriter output)
    {
        output.Write(string.Join(',', Columns));
        output.Write('\n');
        foreach (var r in rows)
        {
            var v = r.Validation;
            string[] cells =
            [
                r.Step.ToString(CultureInfo.InvariantCulture), r.Epoch == 0 ? "" : r.Epoch.ToString(CultureInfo.InvariantCulture),
                N(r.Loss), N(r.Lr), N(r.SamplesPerSecond), N(r.StepMs), N(r.ComputeMs), N(r.AllreduceMs), N(r.WaitingMs), N(r.GradNorm),
                r.Workers?.ToString(CultureInfo.InvariantCulture) ?? "", r.Epoch == 0 ? "" : r.Skipped ? "true" : "false", N(r.ElapsedSeconds),
                N(v?.Loss), N(v?.HasAccuracy == true ? v.Accuracy : null), N(v?.HasMacroF1 == true ? v.MacroF1 : null),
                N(v?.HasPerplexity == true ? v.Perplexity : null), N(v?.HasBitsPerToken == true ? v.BitsPerToken : null),
                N(r.Bubble), string.Join(';', r.StageComputeMs.Select(x => N(x))),
            ];
            output.Write(string.Join(',', cells));
            output.Write('\n');
        }
    }

    public static void WriteJsonLines(IEnumerable<MetricsRow> rows, Stream output)
    {
        foreach (var r in rows)
        {
            using (var json = new Utf8JsonWriter(output))
                WriteJson(r, json);
            output.WriteByte((byte)'\n');
        }
    }

    /// <summary>A row as a JSON object with the <see cref="Columns"/> as keys (absent values left out; stage_compute_ms an array).</summary>
    public static void WriteJson(MetricsRow r, Utf8JsonWriter json)
    {
        json.WriteStartObject();
        json.WriteNumber("step", r.Step);
        if (r.Epoch > 0)
        {
            json.WriteNumber("epoch", r.Epoch);
            Number(json, "loss", r.Loss);
            Number(json, "lr", r.Lr);
            Number(json, "samples_per_second", r.SamplesPerSecond);
            Number(json, "step_ms", r.StepMs);
            Number(json, "compute_ms", r.ComputeMs);
            Number(json, "allreduce_ms", r.AllreduceMs);
            Number(json, "waiting_ms", r.WaitingMs);
            Number(json, "grad_norm", r.GradNorm);
            if (r.Workers is { } w) json.WriteNumber("workers", w);
            json.WriteBoolean("skipped", r.Skipped);
            Number(json, "elapsed_seconds", r.ElapsedSeconds);
        }
        if (r.Validation is { } v)
        {
            Number(json, "val_loss", v.Loss);
            if (v.HasAccuracy) Number(json, "val_accuracy", v.Accuracy);
            if (v.HasMacroF1) Number(json, "val_macro_f1", v.MacroF1);
            if (v.HasPerplexity) Number(json, "val_perplexity", v.Perplexity);
            if (v.HasBitsPerToken) Number(json, "val_bits_per_token", v.BitsPerToken);
        }
        if (r.Bubble is { } b)
        {
            Number(json, "bubble", b);
            json.WriteStartArray("stage_compute_ms");
            foreach (var x in r.StageComputeMs) Number(json, null, x);
            json.WriteEndArray();
        }
        json.WriteEndObject();
    }

    /// <summary>Round-trip formatting; NaN and infinities (a skipped non-finite step) as CSV's NaN / Infinity.</summary>
    static string N(double? x) => x is { } d ? d.ToString("R", CultureInfo.InvariantCulture) : "";

    /// <summary>JSON has no NaN: a non-finite value is written as null.</summary>
    static void Number(Utf8JsonWriter json, string? name, double? x)
    {
        if (x is not { } d) return;
        if (name is not null) json.WritePropertyName(name);
        if (double.IsFinite(d)) json.WriteNumberValue(d);
        else json.WriteNullValue();
    }

    /// <summary>The table as CSV text.</summary>
    public static string Csv(IEnumerable<MetricsRow> rows)
    {
        var text = new StringWriter(new StringBuilder(), CultureInfo.InvariantCulture);
        WriteCsv(rows, text);
        return text.ToString();
    }
}
