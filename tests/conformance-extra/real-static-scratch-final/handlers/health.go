package handlers

func Health() {}
