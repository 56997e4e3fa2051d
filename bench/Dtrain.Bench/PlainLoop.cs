using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Bench;

/// <summary>The reference: a plain hand-written TorchSharp char-LM loop, no engine, to measure the engine against.</summary>
public sealed class PlainCharLm : nn.Module<Tensor, Tensor>
{
    private readonly Embedding emb;
    private readonly LSTM lstm;
    private readonly Linear head;

    public PlainCharLm(int vocab, int embed, int hidden, int layers) : base("plain")
    {
        emb = nn.Embedding(vocab, embed);
        lstm = nn.LSTM(embed, hidden, layers, batchFirst: true);
        head = nn.Linear(hidden, vocab);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var e = emb.call(x);
        var (y, h, c) = lstm.call(e);
        h.Dispose();
        c.Dispose();
        using (y) return head.call(y);
    }

    /// <summary>Seconds per step over <paramref name="steps"/> steps after <paramref name="warmup"/>, on fixed random data.</summary>
    public static double SecondsPerStep(int vocab, int embed, int hidden, int layers, int batch, int seq, int warmup, int steps)
    {
        random.manual_seed(0);
        using var model = new PlainCharLm(vocab, embed, hidden, layers);
        using var opt = optim.Adam(model.parameters(), 2e-3);
        var gen = new Generator(0);
        using var data = randint(0, vocab, [batch, seq + 1], generator: gen);
        using var x = data[.., ..seq].contiguous();
        using var y = data[.., 1..].contiguous();
        var sw = new System.Diagnostics.Stopwatch();
        for (var i = 0; i < warmup + steps; i++)
        {
            if (i == warmup) sw.Start();
            using var scope = NewDisposeScope();
            opt.zero_grad();
            var logits = model.call(x);
            var loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1));
            loss.backward();
            nn.utils.clip_grad_norm_(model.parameters(), 1.0);
            opt.step();
            _ = loss.item<float>();
        }
        return sw.Elapsed.TotalSeconds / steps;
    }
}
