test("x")
