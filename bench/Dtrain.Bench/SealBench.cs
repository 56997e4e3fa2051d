using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Dtrain.Collective;

namespace Dtrain.Bench;

/// <summary>
/// What the tcp+tls record layer's cipher costs per byte, on one thread, in GB of plaintext per CPU-second (this
/// thread's CPU time, so other load on the machine does not count): .NET's <see cref="AesGcm"/> (OpenSSL's EVP on
/// Linux) sealing and opening records of 16 KiB .. 1 MiB, (a) one buffer over and over in cache (as
/// <c>openssl speed -evp aes-128-gcm -bytes N</c> does), (b) streaming through a 64 MB source and a 64 MB destination
/// as the ring does, with the plain copies the link adds beside them for scale; and the record layer's own cipher
/// (<see cref="SealedRecords.Sealer"/>: AEGIS-128X2, VAES and AES-NI builds, with a 16-byte key; AEGIS-256 with 32) beside
/// libsodium's AEGIS-128L, in cache.
/// </summary>
public static class SealBench
{
    public const string Usage = "dtrain-bench seal [--sizes 16,64,256,1024 (KiB)] [--mb 64] [--key 16|32] [--rounds 3]";

    public static int Run(string[] args)
    {
        if (BenchArgs.Help(args, Usage)) return 0;
        BenchArgs.CheckOptions(args, Usage, "--sizes", "--mb", "--key", "--rounds");
        if (BenchArgs.Positional(args).Skip(1).FirstOrDefault() is { } extra) throw new ArgumentException($"unexpected argument {extra} (usage: {Usage})");
        var sizes = BenchArgs.Numbers("--sizes", BenchArgs.Option(args, "--sizes") ?? "16,64,256,1024", 1, 16 * 1024, Usage);
        var mb = BenchArgs.Number("--mb", BenchArgs.Option(args, "--mb") ?? "64", 1, 4096, Usage);
        var keyBytes = BenchArgs.Number("--key", BenchArgs.Option(args, "--key") ?? "16", 16, 32, Usage);
        if (keyBytes is not (16 or 32)) throw new ArgumentException($"--key: {keyBytes} is not 16 or 32 (usage: {Usage})");
        var rounds = BenchArgs.Number("--rounds", BenchArgs.Option(args, "--rounds") ?? "3", 1, 100, Usage);
        var streamBytes = (long)mb << 20;

        var key = RandomNumberGenerator.GetBytes(keyBytes);
        var secret = RandomNumberGenerator.GetBytes(32);
        using var aes = new AesGcm(key, 16);
        var nonce = new byte[12];
        var tag = new byte[16];
        var ad = new byte[8];
        var source = GC.AllocateUninitializedArray<byte>(checked((int)streamBytes), pinned: true);
        var destination = GC.AllocateUninitializedArray<byte>(checked((int)streamBytes), pinned: true);
        RandomNumberGenerator.Fill(source.AsSpan(0, Math.Min(source.Length, 1 << 20)));
        for (var o = 1 << 20; o < source.Length; o += 1 << 20) source.AsSpan(0, Math.Min(1 << 20, source.Length - o)).CopyTo(source.AsSpan(o));
        destination.AsSpan().Fill(1);

        Console.WriteLine($"AES-{keyBytes * 8}-GCM via System.Security.Cryptography.AesGcm ({RuntimeInformation.OSDescription}), one thread; GB of plaintext per CPU-second of this thread, median of {rounds} rounds [min-max]; stream {mb} MB");
        Console.WriteLine(keyBytes == 16
            ? $"SealedRecords.Sealer rows: AEGIS-128X2 (eng/native/aegis128x2.c, {(SealedRecords.Native.dtrain_aegis128x2_implementation() == 2 ? "VAES build" : "AES-NI build: this CPU has no VAES")})"
            : "SealedRecords.Sealer rows: AEGIS-256 (libsodium)");
        Console.WriteLine("| record | case | GB/s per CPU-s | wall GB/s |");
        Console.WriteLine("|---|---|---|---|");
        foreach (var kib in sizes)
        {
            var r = kib * 1024;
            var records = (int)(streamBytes / r);
            var inCache = GC.AllocateUninitializedArray<byte>(r, pinned: true);
            var sealedOne = GC.AllocateUninitializedArray<byte>(r, pinned: true);
            var opened = GC.AllocateUninitializedArray<byte>(r, pinned: true);
            source.AsSpan(0, r).CopyTo(inCache);
            aes.Encrypt(nonce, inCache, sealedOne, tag, ad);
            var cacheReps = (int)Math.Max(1, streamBytes / r);
            // The stream's records, sealed under one key with distinct nonces (as the link's sequence makes them).
            var tags = new byte[records * 16];
            void SealStream()
            {
                for (var k = 0; k < records; k++) aes.Encrypt(Nonce(nonce, k), source.AsSpan(k * r, r), destination.AsSpan(k * r, r), tags.AsSpan(k * 16, 16), ad);
            }
            var cases = new (string Name, Action Body, long Bytes, Action? Prepare)[]
            {
                ("(a) seal in cache (openssl speed's case)", () =>
                {
                    for (var i = 0; i < cacheReps; i++) aes.Encrypt(nonce, inCache, sealedOne, tag, ad);
                }, (long)cacheReps * r, null),
                ("(a) open in cache, into another buffer", () =>
                {
                    for (var i = 0; i < cacheReps; i++) aes.Decrypt(nonce, sealedOne, tag, opened, ad);
                }, (long)cacheReps * r, null),
                ("(a) seal in cache, in place", () =>
                {
                    for (var i = 0; i < cacheReps; i++) aes.Encrypt(nonce, opened, opened, tag, ad);
                }, (long)cacheReps * r, null),
                ("(a) SealedRecords.Sealer in cache (nonce, head, ratchet)", () =>
                {
                    using var sealer = new SealedRecords.Sealer(secret, keyBytes: keyBytes);
                    var output = new byte[SealedRecords.Sealed(r)];
                    for (var i = 0; i < cacheReps; i++) sealer.Seal(SealedRecords.Payload, inCache, output);
                }, (long)cacheReps * r, null),
                ("(a) SealedRecords.Sealer in cache, AEGIS-128X2's AES-NI build (no VAES)", () =>
                {
                    if (keyBytes != 16 || SealedRecords.Native.dtrain_aegis128x2_force(1) != 0) return;
                    try
                    {
                        using var sealer = new SealedRecords.Sealer(secret, keyBytes: keyBytes);
                        var output = new byte[SealedRecords.Sealed(r)];
                        for (var i = 0; i < cacheReps; i++) sealer.Seal(SealedRecords.Payload, inCache, output);
                    }
                    finally
                    {
                        SealedRecords.Native.dtrain_aegis128x2_force(2);
                    }
                }, keyBytes == 16 ? (long)cacheReps * r : 0, null),
                ("(a) AEGIS-128L (libsodium through NSec: tcp+tls's cipher before AEGIS-128X2) seal in cache", () =>
                {
                    var aegis = NSec.Cryptography.AeadAlgorithm.Aegis128L;
                    using var k = NSec.Cryptography.Key.Import(aegis, key.AsSpan(0, 16), NSec.Cryptography.KeyBlobFormat.RawSymmetricKey);
                    var output = new byte[r + aegis.TagSize];
                    var n = new byte[aegis.NonceSize];
                    for (var i = 0; i < cacheReps; i++) aegis.Encrypt(k, n, ad, inCache, output);
                }, (long)cacheReps * r, null),
                ("(b) seal stream -> one small buffer (the link's send)", () =>
                {
                    for (var k = 0; k < records; k++) aes.Encrypt(Nonce(nonce, k), source.AsSpan(k * r, r), sealedOne, tags.AsSpan(k * 16, 16), ad);
                }, (long)records * r, null),
                ("(b) seal stream -> stream", SealStream, (long)records * r, null),
                ("(b) open stream in place, cold (ciphertext not in cache)", () =>
                {
                    for (var k = 0; k < records; k++) aes.Decrypt(Nonce(nonce, k), destination.AsSpan(k * r, r), tags.AsSpan(k * 16, 16), destination.AsSpan(k * r, r), ad);
                }, (long)records * r, SealStream),
                ("(b) copy small -> stream, then open there in place (the link's receive: kernel copy, open)", () =>
                {
                    aes.Encrypt(nonce, inCache, sealedOne, tag, ad);
                    for (var k = 0; k < records; k++)
                    {
                        var at = destination.AsSpan(k * r, r);
                        sealedOne.CopyTo(at);
                        aes.Decrypt(nonce, at, tag, at, ad);
                    }
                }, (long)records * r, null),
                ("(b) open small -> stream (one pass)", () =>
                {
                    for (var k = 0; k < records; k++) aes.Decrypt(nonce, sealedOne, tag, destination.AsSpan(k * r, r), ad);
                }, (long)records * r, null),
                ("(b) copy stream -> small (for scale: the kernel's send copy)", () =>
                {
                    for (var k = 0; k < records; k++) source.AsSpan(k * r, r).CopyTo(sealedOne);
                }, (long)records * r, null),
                ("(b) copy small -> stream (for scale: the kernel's receive copy)", () =>
                {
                    for (var k = 0; k < records; k++) sealedOne.AsSpan().CopyTo(destination.AsSpan(k * r, r));
                }, (long)records * r, null),
            };
            foreach (var (name, body, bytes, prepare) in cases)
            {
                if (bytes == 0) continue;   // not for this key size or CPU
                prepare?.Invoke();
                body();
                var perCpu = new List<double>();
                var wall = new List<double>();
                for (var round = 0; round < rounds; round++)
                {
                    prepare?.Invoke();
                    var cpu0 = ThreadCpuSeconds();
                    var clock = Stopwatch.StartNew();
                    body();
                    var w = clock.Elapsed.TotalSeconds;
                    var cpu = Math.Max(ThreadCpuSeconds() - cpu0, 1e-6);
                    perCpu.Add(bytes / cpu / 1e9);
                    wall.Add(bytes / w / 1e9);
                }
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {kib} KiB | {name} | {BenchArgs.Median(perCpu):F2} [{perCpu.Min():F2}-{perCpu.Max():F2}] | {BenchArgs.Median(wall):F2} |"));
            }
        }
        return 0;
    }

    private static byte[] Nonce(byte[] nonce, int k)
    {
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(nonce.AsSpan(8), k);
        return nonce;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds, Nanoseconds;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int clock_gettime(int clock, out TimeSpec time);

    /// <summary>This thread's CPU seconds (Linux CLOCK_THREAD_CPUTIME_ID, to the nanosecond; getrusage's are in scheduler ticks); the process's elsewhere.</summary>
    private static double ThreadCpuSeconds()
    {
        if (OperatingSystem.IsLinux() && clock_gettime(3, out var t) == 0) return t.Seconds + t.Nanoseconds / 1e9;
        return Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
    }
}
