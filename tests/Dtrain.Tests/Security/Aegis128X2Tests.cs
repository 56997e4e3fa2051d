using System.Security.Cryptography;
using Dtrain.Collective;

namespace Dtrain.Tests.Security;

/// <summary>
/// The tcp+tls record cipher, AEGIS-128X2 with its 256-bit tag, from dtrain's native library (eng/native/aegis128x2.c):
/// the draft's test vectors (draft-irtf-cfrg-aegis-aead, appendix "AEGIS-128X2 Test Vectors") on both of its builds
/// (VAES where the CPU has it, AES-NI), and the two builds giving the same bytes on messages of every tail length.
/// </summary>
[Collection(nameof(Aegis128X2Tests))]   // the tests switch the library's build: never two at once
public unsafe class Aegis128X2Tests
{
    static readonly byte[] Key = Convert.FromHexString("000102030405060708090a0b0c0d0e0f");
    static readonly byte[] Nonce = Convert.FromHexString("101112131415161718191a1b1c1d1e1f");

    static int[] Builds()
    {
        var best = SealedRecords.Native.dtrain_aegis128x2_implementation();
        Assert.True(best > 0, "this CPU has no AES instructions: tcp+tls cannot run here");
        return best == 2 ? [2, 1] : [1];
    }

    static (byte[] Ciphertext, byte[] Tag) Seal(byte[] message, byte[] ad, byte[] key, byte[] nonce)
    {
        var c = new byte[message.Length];
        var tag = new byte[32];
        fixed (byte* cp = c, tp = tag, mp = message, ap = ad, np = nonce, kp = key)
            Assert.Equal(0, SealedRecords.Native.dtrain_aegis128x2_encrypt(cp, tp, mp, (nuint)message.Length, ap, (nuint)ad.Length, np, kp));
        return (c, tag);
    }

    static int Open(byte[] into, byte[] ciphertext, byte[] tag, byte[] ad, byte[] key, byte[] nonce)
    {
        fixed (byte* mp = into, cp = ciphertext, tp = tag, ap = ad, np = nonce, kp = key)
            return SealedRecords.Native.dtrain_aegis128x2_decrypt(mp, cp, (nuint)ciphertext.Length, tp, ap, (nuint)ad.Length, np, kp);
    }

    static void Use(int build) => Assert.Equal(0, SealedRecords.Native.dtrain_aegis128x2_force(build));

    [Fact]
    public void Both_builds_give_the_drafts_test_vectors_and_refuse_a_changed_byte()
    {
        try
        {
            foreach (var build in Builds())
            {
                Use(build);
                // Test vector 1: empty message and associated data.
                var (empty, tag1) = Seal([], [], Key, Nonce);
                Assert.Empty(empty);
                Assert.Equal("b92c71fdbd358b8a4de70b27631ace90cffd9b9cfba82028412bac41b4f53759", Convert.ToHexStringLower(tag1));
                // Test vector 2: 8 bytes of associated data, a 120-byte message (one full 64-byte block and a tail).
                var ad = Convert.FromHexString("0102030401020304");
                var message = Enumerable.Range(0, 120).Select(i => (byte)(4 + i % 4)).ToArray();
                var (c, tag) = Seal(message, ad, Key, Nonce);
                Assert.Equal(
                    "5795544301997f93621b278809d6331b3bfa6f18e90db12c4aa35965b5e98c5fc6fb4e54bcb6111842c20637252eff74"
                    + "7cb3a8f85b37de80919a589fe0f24872bc926360696739e05520647e390989e1eb5fd42f99678a0276a498f8c454761c"
                    + "9d6aacb647ad56be62b29c22cd4b5761b38f43d5a5ee062f", Convert.ToHexStringLower(c));
                Assert.Equal("c471876f9b4978c44f2ae1ce770cdb11a094ee3feca64e7afcd48bfe52c60eca", Convert.ToHexStringLower(tag));
                var opened = new byte[c.Length];
                Assert.Equal(0, Open(opened, c, tag, ad, Key, Nonce));
                Assert.Equal(message, opened);
                // One bit changed anywhere (ciphertext, tag, associated data, nonce): refused, and no plaintext is left.
                foreach (var (what, alter) in new (string, Action)[] { ("ciphertext", () => c[70] ^= 1), ("tag", () => tag[31] ^= 0x80), ("associated data", () => ad[0] ^= 1) })
                {
                    alter();
                    var into = new byte[c.Length];
                    Assert.True(Open(into, c, tag, ad, Key, Nonce) == -1, $"a changed {what} was accepted (build {build})");
                    Assert.All(into, b => Assert.Equal(0, b));
                    alter();
                }
                var otherNonce = (byte[])Nonce.Clone();
                otherNonce[15] ^= 1;
                Assert.Equal(-1, Open(new byte[c.Length], c, tag, ad, Key, otherNonce));
            }
        }
        finally
        {
            SealedRecords.Native.dtrain_aegis128x2_force(Builds()[0]);
        }
    }

    [Fact]
    public void The_VAES_and_AES_NI_builds_seal_the_same_bytes_and_open_each_others_records_at_every_tail_length()
    {
        var builds = Builds();
        if (builds.Length == 1) Assert.Fail("this CPU has no VAES: only the AES-NI build runs here, so the two cannot be compared (the draft's vectors still check it)");
        try
        {
            var random = new Random(25);
            var key = RandomNumberGenerator.GetBytes(16);
            var nonce = RandomNumberGenerator.GetBytes(16);
            foreach (var length in Enumerable.Range(0, 200).Concat([1023, 1024, 65_536 + 17, 1 << 20]))
            {
                var message = new byte[length];
                random.NextBytes(message);
                var ad = new byte[length % 131];
                random.NextBytes(ad);
                Use(2);
                var (c2, t2) = Seal(message, ad, key, nonce);
                Use(1);
                var (c1, t1) = Seal(message, ad, key, nonce);
                Assert.True(c1.AsSpan().SequenceEqual(c2) && t1.AsSpan().SequenceEqual(t2), $"the builds disagree on a {length}-byte message");
                var opened = new byte[length];
                Assert.Equal(0, Open(opened, c2, t2, ad, key, nonce));   // AES-NI opens the VAES record
                Assert.Equal(message, opened);
                Use(2);
                Array.Clear(opened);
                Assert.Equal(0, Open(opened, c1, t1, ad, key, nonce));
                Assert.Equal(message, opened);
                // In place, as the links open records.
                var inPlace = (byte[])c1.Clone();
                Assert.Equal(0, Open(inPlace, inPlace, t1, ad, key, nonce));
                Assert.Equal(message, inPlace);
            }
        }
        finally
        {
            SealedRecords.Native.dtrain_aegis128x2_force(builds[0]);
        }
    }
}
