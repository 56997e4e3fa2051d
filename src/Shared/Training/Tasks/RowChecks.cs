namespace Dtrain.Training.Tasks;

/// <summary>What every task checks of rows that arrived from elsewhere (see <see cref="ITrainingTask.CheckRows"/>).</summary>
internal static class RowChecks
{
    /// <summary>The inputs fill Rows × Width and there are <paramref name="targets"/> targets.</summary>
    public static void Shape(BatchRows r, long targets, string what)
    {
        if (r.Rows < 0 || r.Width < 1 || (long)r.Rows * r.Width != r.Inputs.LongLength)
            throw new ArgumentException($"{what}: {r.Inputs.LongLength} inputs do not fill {r.Rows} x {r.Width}");
        if (r.Targets.LongLength != targets)
            throw new ArgumentException($"{what}: {r.Targets.LongLength} targets for {r.Rows} rows");
    }

    /// <summary>Every id in [0, <paramref name="vocabSize"/>): an out-of-range id would abort libtorch.</summary>
    public static void Tokens(long[] ids, int vocabSize, string what)
    {
        foreach (var id in ids)
            if ((ulong)id >= (ulong)vocabSize) throw new ArgumentException($"{what} id {id} outside the vocabulary [0, {vocabSize})");
    }
}
